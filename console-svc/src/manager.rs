//! Console lifecycles: the one place that decides what state a node's
//! console is in.
//!
//! The gRPC layer calls [`ConsoleManager`]; the manager assigns ports, asks
//! the [`Coordinator`] for ownership, starts and stops backend consoles, and
//! publishes every change to watchers. Enable and disable of one node are
//! serialized by a per-node lock; different nodes never wait for each other.
//!
//! With etcd ([`Placement::Cluster`]) the cluster layer decides: each spec
//! carries its cluster-wide port, and consoles stopped by a lost lease are
//! claimed again by placement, in rank order, not resumed here.
//!
//! ```text
//!            enable                 port accepts
//!  (none) ──────────▶ STARTING ─────────────────▶ RUNNING ◀──┐ probe ok /
//!     ▲                  │ start failed             │ BMC     │ session ok
//!     │                  ▼                          ▼ failed  │
//!     │               FAILED ◀──────────────────── FAILED ────┘ (retried with backoff)
//!     │                  │ disable                  │ disable
//!     └── enable ─── DISABLED ◀─────────────────────┘  (port kept for the node)
//! ```

mod census;
mod consoles;
mod fencing;
mod port_choice;
#[cfg(test)]
mod port_tests;
mod start;
mod supervise;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::{ConsoleBackend, LogSnapshot, RunningConsole};
use crate::config::Config;
use crate::coordinator::{Coordinator, Ownership};
use crate::error::ConsoleError;
use crate::ports::PortAllocator;
use crate::process::ProcessTable;
use crate::spec::{ConsoleKind, ConsoleSpec, NodeId};
use crate::tasks::Tasks;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleState {
    Starting,
    Running,
    Failed,
    Disabled,
}

/// What callers see of a console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleInfo {
    pub node: NodeId,
    pub kind: ConsoleKind,
    pub state: ConsoleState,
    /// Set while the port is open (STARTING excluded).
    pub endpoint: Option<Endpoint>,
    pub owner: String,
    pub last_error: Option<String>,
    /// When the console was first asked for and last changed; None when
    /// unknown (cluster: a node without a spec, or a spec written before
    /// the times were kept).
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub backend: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `tcp://host:port`, the URL nova-serialproxy is given.
    pub fn url(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }
}

/// Who decides a console's port and whether this replica runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This replica alone: ports from the local allocator; consoles stopped
    /// by a lost lease are resumed here as soon as serving returns.
    Local,
    /// The cluster layer (etcd): each spec carries its port, reserved
    /// cluster-wide (`ports/<port>`), which this replica serves as is;
    /// consoles stopped by a lost lease are left to placement.
    Cluster,
}

/// How long shutdown waits for the manager's own tasks once the consoles
/// stopped (a supervisor may be finishing an ipmitool probe); past it they
/// are left to end on their own.
const TASKS_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// BMC probes running at once (see `Inner::probes`).
const MAX_CONCURRENT_PROBES: usize = 16;

/// The backends a manager starts consoles with, one per console kind.
#[derive(Clone)]
pub struct Backends {
    pub serial: Arc<dyn ConsoleBackend>,
    /// None until a VNC backend is configured.
    pub vnc: Option<Arc<dyn ConsoleBackend>>,
}

impl Backends {
    fn for_kind(&self, kind: ConsoleKind) -> Result<&Arc<dyn ConsoleBackend>, ConsoleError> {
        match kind {
            ConsoleKind::Serial => Ok(&self.serial),
            ConsoleKind::Vnc => self.vnc.as_ref().ok_or_else(|| {
                ConsoleError::Unsupported("this console-svc serves no VNC consoles".into())
            }),
        }
    }
}

#[derive(Clone)]
pub struct ConsoleManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    backends: Backends,
    coordinator: Arc<dyn Coordinator>,
    processes: Arc<ProcessTable>,
    placement: Placement,
    /// Used with [`Placement::Local`] only.
    ports: Mutex<PortAllocator>,
    slots: Mutex<HashMap<NodeId, Arc<Slot>>>,
    events: broadcast::Sender<ConsoleInfo>,
    /// BMC probes at once, across consoles: a takeover or a restart starts
    /// many consoles together, and each probe is an ipmitool process.
    probes: Arc<tokio::sync::Semaphore>,
    cancel: CancellationToken,
    /// The fencing follower and each console's supervisor, on `cancel`.
    tasks: Tasks,
}

/// One node's console. `op` serializes enable/disable; `state` is what
/// readers see and is only held briefly.
struct Slot {
    op: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

struct SlotState {
    info: ConsoleInfo,
    spec: Option<ConsoleSpec>,
    running: Option<Running>,
    /// Stopped because this replica stopped serving; resumed when it serves again.
    fenced: bool,
}

impl SlotState {
    /// Has an enable got as far as recording a spec (or a disable a
    /// state)? A slot only just created for an enable that is refused has
    /// not, and is shown nowhere.
    fn is_recorded(&self) -> bool {
        self.spec.is_some() || self.info.state != ConsoleState::Starting
    }

    fn shown(&self) -> Option<ConsoleInfo> {
        self.is_recorded().then(|| self.info.clone())
    }
}

/// A started backend console and what keeps it company.
struct Running {
    console: Box<dyn RunningConsole>,
    ownership: Ownership,
    /// Stops the supervisor (health follower and BMC probe).
    supervisor: CancellationToken,
}

impl ConsoleManager {
    pub fn new(
        config: Arc<Config>,
        backends: Backends,
        coordinator: Arc<dyn Coordinator>,
        processes: Arc<ProcessTable>,
        placement: Placement,
        cancel: CancellationToken,
    ) -> Self {
        let ports = PortAllocator::new(config.console.port_range.clone());
        let manager = Self {
            inner: Arc::new(Inner {
                config,
                backends,
                coordinator,
                processes,
                placement,
                ports: Mutex::new(ports),
                slots: Mutex::default(),
                events: broadcast::channel(1024).0,
                probes: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PROBES)),
                tasks: Tasks::new(&cancel),
                cancel,
            }),
        };
        fencing::spawn(manager.clone());
        crate::metrics::get().add_census(Arc::downgrade(&manager.inner) as _);
        manager
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ConsoleInfo> {
        self.inner.events.subscribe()
    }

    /// Cancelled when the service shuts down; watchers end their streams.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    pub fn get(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        self.slot(node)
            .and_then(|slot| slot.state.lock().expect("slot lock").shown())
            .ok_or_else(|| ConsoleError::NotFound(node.to_string()))
    }

    /// Every console, by node id.
    pub fn list(&self) -> Vec<ConsoleInfo> {
        // Under the map's lock, without cloning slots: a clone held here
        // would keep a refused enable's slot from being forgotten.
        let slots = self.inner.slots.lock().expect("slots");
        let mut all: Vec<ConsoleInfo> = slots
            .values()
            .filter_map(|s| s.state.lock().expect("slot lock").shown())
            .collect();
        drop(slots);
        all.sort_by(|a, b| a.node.cmp(&b.node));
        all
    }

    pub fn log(&self, node: &NodeId, max_bytes: usize) -> Result<LogSnapshot, ConsoleError> {
        let slot = self
            .slot(node)
            .ok_or_else(|| ConsoleError::NotFound(node.to_string()))?;
        let st = slot.state.lock().expect("slot lock");
        let running = st
            .running
            .as_ref()
            .ok_or_else(|| ConsoleError::NotFound(format!("{node} (console is not enabled)")))?;
        // A copy out of an in-memory ring: cheap enough under the slot lock.
        running.console.log(max_bytes).ok_or_else(|| {
            ConsoleError::Unsupported(format!(
                "the {} backend keeps no console log; use console.backend = \"native\"",
                st.info.backend
            ))
        })
    }

    /// Start (or keep) a node's console; see the module doc for the states.
    ///
    /// A refused request (a port outside the range or another node's, a
    /// shutdown) records nothing: a node seen for the first time is
    /// forgotten again, so refusals cost neither memory nor list entries.
    pub async fn enable(&self, spec: ConsoleSpec) -> Result<ConsoleInfo, ConsoleError> {
        let backend = self.inner.backends.for_kind(spec.kind())?.clone();
        let node = spec.node.clone();
        let slot = self.slot_or_insert(&node);
        let result = self.enable_slot(&slot, &backend, spec).await;
        if result.is_err() {
            self.forget_if_unrecorded(&node, slot);
        }
        result
    }

    async fn enable_slot(
        &self,
        slot: &Arc<Slot>,
        backend: &Arc<dyn ConsoleBackend>,
        spec: ConsoleSpec,
    ) -> Result<ConsoleInfo, ConsoleError> {
        let _op = slot.op.lock().await;
        if self.inner.cancel.is_cancelled() {
            return Err(ConsoleError::ShuttingDown);
        }
        {
            let st = slot.state.lock().expect("slot lock");
            if st.running.is_some() && st.spec.as_ref() == Some(&spec) {
                return Ok(st.info.clone());
            }
        }
        let choice = self.port_for(&spec)?;
        // A changed spec (new BMC, new credentials) restarts on the same port.
        self.stop_running(slot).await;
        self.update(slot, |st| {
            st.spec = Some(spec.clone());
            st.info.kind = spec.kind();
            st.info.backend = backend.name();
            st.info.state = ConsoleState::Starting;
            st.info.endpoint = None;
            st.info.last_error = None;
        });
        let span = info_span!("console", node = %spec.node);
        let (kind, began) = (census::kind_label(spec.kind()), tokio::time::Instant::now());
        let started = self
            .start(slot, backend, spec, choice)
            .instrument(span)
            .await;
        crate::metrics::get().enable_done(kind, started.is_ok(), began.elapsed());
        started
    }

    /// Stop a node's console; its port stays reserved for it.
    pub async fn disable(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        let Some(slot) = self.slot(node) else {
            return Ok(self.blank(node.clone(), ConsoleState::Disabled));
        };
        let _op = slot.op.lock().await;
        self.stop_running(&slot).await;
        let info = self.update(&slot, |st| {
            st.info.state = ConsoleState::Disabled;
            st.info.endpoint = None;
        });
        info!(node = %node, "console disabled");
        Ok(info)
    }

    /// Stop every console (SIGTERM path), each within the kill/shutdown
    /// budget; consoles are stopped concurrently.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let slots = self.slots();
        let stops = slots.iter().map(|slot| async move {
            let _op = slot.op.lock().await;
            self.stop_running(slot).await;
            self.update(slot, |st| {
                if st.info.state != ConsoleState::Disabled {
                    st.info.state = ConsoleState::Disabled;
                    st.info.endpoint = None;
                }
            });
        });
        let budget = self.inner.config.console.shutdown_timeout;
        if tokio::time::timeout(budget, futures::future::join_all(stops))
            .await
            .is_err()
        {
            warn!(
                ?budget,
                "some consoles did not stop within the shutdown budget"
            );
        }
        // Supervisors were stopped with their consoles, the fencing follower
        // by `cancel`: this only waits for them to end.
        if !self.inner.tasks.stop(TASKS_BOUND).await {
            warn!(
                bound = ?TASKS_BOUND,
                "manager tasks still running after shutdown"
            );
        }
    }

    /// Stop and release every console but keep serving the API (drain):
    /// other replicas claim the released consoles at once.
    pub async fn release_all(&self) {
        let slots = self.slots();
        let stops = slots.iter().map(|slot| async move {
            let _op = slot.op.lock().await;
            self.stop_running(slot).await;
            self.update(slot, |st| {
                st.info.state = ConsoleState::Disabled;
                st.info.endpoint = None;
            });
        });
        futures::future::join_all(stops).await;
    }

    /// This replica's claim on a node while its console runs here.
    pub fn ownership(&self, node: &NodeId) -> Option<Ownership> {
        let slot = self.slot(node)?;
        let st = slot.state.lock().expect("slot lock");
        st.running.as_ref().map(|r| r.ownership.clone())
    }

    /// The backend name consoles of `kind` get here.
    pub fn backend_name(&self, kind: ConsoleKind) -> &'static str {
        self.inner
            .backends
            .for_kind(kind)
            .map_or("none", |b| b.name())
    }

    async fn stop_running(&self, slot: &Arc<Slot>) {
        let running = slot.state.lock().expect("slot lock").running.take();
        if let Some(r) = running {
            r.supervisor.cancel();
            r.console.stop().await;
            let _ = self.inner.coordinator.release(&r.ownership).await;
        }
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.inner.slots.lock().expect("slots");
        slots.values().cloned().collect()
    }

    fn slot(&self, node: &NodeId) -> Option<Arc<Slot>> {
        self.inner.slots.lock().expect("slots").get(node).cloned()
    }

    /// Drop a slot that an enable created but never recorded anything in,
    /// unless another caller holds it too (it may still record).
    fn forget_if_unrecorded(&self, node: &NodeId, slot: Arc<Slot>) {
        let mut slots = self.inner.slots.lock().expect("slots");
        // Clones of a slot are only taken under the `slots` lock, so
        // "the map's and ours" cannot grow while we look.
        let alone = Arc::strong_count(&slot) == 2;
        let unrecorded = !slot.state.lock().expect("slot lock").is_recorded();
        if alone && unrecorded && slots.get(node).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            slots.remove(node);
        }
    }

    fn slot_or_insert(&self, node: &NodeId) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().expect("slots");
        slots
            .entry(node.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    op: tokio::sync::Mutex::new(()),
                    state: Mutex::new(SlotState {
                        info: self.blank(node.clone(), ConsoleState::Starting),
                        spec: None,
                        running: None,
                        fenced: false,
                    }),
                })
            })
            .clone()
    }

    fn blank(&self, node: NodeId, state: ConsoleState) -> ConsoleInfo {
        let now = SystemTime::now();
        ConsoleInfo {
            node,
            kind: ConsoleKind::Serial,
            state,
            endpoint: None,
            owner: self.inner.coordinator.replica_id().to_owned(),
            last_error: None,
            created_at: Some(now),
            updated_at: Some(now),
            backend: self.inner.backends.serial.name(),
        }
    }

    /// Change a slot's state and publish the result if anything changed.
    fn update(&self, slot: &Slot, change: impl FnOnce(&mut SlotState)) -> ConsoleInfo {
        let mut st = slot.state.lock().expect("slot lock");
        let before = st.info.clone();
        change(&mut st);
        if st.info != before {
            st.info.updated_at = Some(SystemTime::now());
            let _ = self.inner.events.send(st.info.clone());
        }
        st.info.clone()
    }
}
