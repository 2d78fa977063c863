//! The inspections the service runs: one record per node (its latest
//! inspection), the changes broadcast to watchers, and the one poller that
//! asks the backend how each waiting node is doing.
//!
//! ```text
//!  start(uuid, "inspector") ──▶ backend.start ──ok──▶ record WAITING ──▶ event
//!  poller, every status_check_period:
//!     each WAITING node, at most one status request per period,
//!     a bounded number at once ──▶ Finished / Failed(e) / still waiting
//!     waiting past inspect_wait_timeout ──▶ Failed, backend.abort (best effort)
//!  abort(uuid) ──▶ backend.abort ──ok──▶ ABORTED ──▶ event
//!  start(uuid, "agent") ──▶ record WAITING (nothing outside to ask)
//!  continue_agent(uuid, inventory, ...) ──▶ crate::agent::process
//!     ──▶ FINISHED with the outcome / FAILED(reason) ──▶ event
//! ```
//!
//! No node is held while waiting: the conductor released its lock before
//! it called `start`; the results reach it through [`Inspections::watch`].
//! The poller is owned by [`Inspections`]' cancellation token.
//!
//! Callers: [`crate::grpc`] (the gRPC methods), [`crate::run`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use porthole_proto::inspect::v1 as pb;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::agent::AgentConfig;
use crate::inspector::{is_locked, Backend, InspectorError, Status};

mod agent;
pub use agent::AgentData;
use agent::LocalAgent;

/// Changes kept for a watcher that reads slower than they happen; one
/// that falls further behind gets every inspection again.
pub const EVENT_BUFFER: usize = 1024;

/// Status requests in flight at once, over all nodes.
pub const MAX_POLLS_IN_FLIGHT: usize = 16;

/// The interface names the conductor may ask for.
pub const INSPECTOR: &str = "inspector";
pub const AGENT: &str = "agent";

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("Inspection through ironic-inspector is disabled in the inspect service: set [inspector] enabled = true and [inspector] service_url (PORTHOLE_INSPECT_INSPECTOR_ENABLED, PORTHOLE_INSPECT_INSPECTOR_SERVICE_URL)")]
    InspectorDisabled,
    #[error("The built-in inspect interface \"agent\" is not available in this inspect service; use \"inspector\"")]
    AgentUnavailable,
    #[error("The inspection of node {uuid} is through {interface:?}, not \"agent\": its data does not come to continue_inspection")]
    NotAgent { uuid: String, interface: String },
    #[error("Unknown inspect interface {0:?}: expected \"inspector\" or \"agent\"")]
    UnknownInterface(String),
    #[error("Expected a node UUID, got {0:?}")]
    BadUuid(String),
    #[error("Node {0} is already being inspected")]
    AlreadyWaiting(String),
    #[error("No inspection of node {0}")]
    NotFound(String),
    #[error("The inspection of node {uuid} is not waiting (it is {state}); nothing to abort")]
    NotWaiting { uuid: String, state: &'static str },
    #[error(transparent)]
    Backend(#[from] InspectorError),
}

/// Timing of the poller.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub status_check_period: Duration,
    pub inspect_wait_timeout: Duration,
}

#[derive(Clone, Debug)]
struct Record {
    interface: String,
    state: pb::InspectionState,
    error: String,
    started_at: SystemTime,
    finished_at: Option<SystemTime>,
    /// When the poller gives up on it, and how long that was.
    deadline: Instant,
    timeout: Duration,
    /// Aborted here, but the backend has not taken the abort yet (it held
    /// the node): the poller asks again each period.
    abort_pending: bool,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn state_name(s: pb::InspectionState) -> &'static str {
    match s {
        pb::InspectionState::Waiting => "waiting",
        pb::InspectionState::Finished => "finished",
        pb::InspectionState::Failed => "failed",
        pb::InspectionState::Aborted => "aborted",
        pb::InspectionState::Unspecified => "unknown",
    }
}

impl Record {
    fn to_pb(&self, uuid: &str) -> pb::Inspection {
        pb::Inspection {
            node_uuid: uuid.to_owned(),
            interface: self.interface.clone(),
            state: self.state as i32,
            error: self.error.clone(),
            started_at_ms: millis(self.started_at),
            finished_at_ms: self.finished_at.map(millis).unwrap_or(0),
        }
    }
}

struct Inner {
    records: Mutex<HashMap<String, Record>>,
    /// Nodes whose start is with the backend now (not recorded yet).
    starting: Mutex<HashSet<String>>,
    events: broadcast::Sender<pb::Inspection>,
    /// `None`: `[inspector] enabled = false`.
    inspector: Option<Arc<dyn Backend>>,
    /// The built-in `agent` interface (`None`: not offered).
    agent: Option<Arc<AgentConfig>>,
    timing: Timing,
}

/// The service's inspections; cheap to clone.
#[derive(Clone)]
pub struct Inspections {
    inner: Arc<Inner>,
}

/// A node's start under way; the mark goes when it ends, however (the
/// caller may give up on the call).
struct Starting<'a> {
    inspections: &'a Inspections,
    uuid: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.inspections.starting().remove(&self.uuid);
    }
}

/// A UUID in its canonical (hyphenated, lower-case) form.
fn canonical(uuid: &str) -> Result<String, InspectError> {
    uuid::Uuid::parse_str(uuid)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| InspectError::BadUuid(uuid.chars().take(64).collect()))
}

impl Inspections {
    /// The registry, and its poller on `tasks` until `cancel`; the
    /// `agent` interface with its default settings.
    pub fn new(
        inspector: Option<Arc<dyn Backend>>,
        timing: Timing,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self::with_buffer(inspector, timing, tasks, cancel, EVENT_BUFFER)
    }

    /// [`Inspections::new`] with `buffer` changes kept for slow watchers
    /// (tests make it small to see one fall behind).
    pub fn with_buffer(
        inspector: Option<Arc<dyn Backend>>,
        timing: Timing,
        tasks: &TaskTracker,
        cancel: CancellationToken,
        buffer: usize,
    ) -> Self {
        let agent = Some(AgentConfig::default());
        Self::with_agent(inspector, agent, timing, tasks, cancel, buffer)
    }

    /// The registry with `agent`'s settings (`None`: no `agent` interface).
    pub fn with_agent(
        inspector: Option<Arc<dyn Backend>>,
        agent: Option<AgentConfig>,
        timing: Timing,
        tasks: &TaskTracker,
        cancel: CancellationToken,
        buffer: usize,
    ) -> Self {
        let (events, _) = broadcast::channel(buffer);
        let this = Self {
            inner: Arc::new(Inner {
                records: Mutex::new(HashMap::new()),
                starting: Mutex::default(),
                events,
                inspector,
                agent: agent.map(Arc::new),
                timing,
            }),
        };
        tasks.spawn(this.clone().poll_loop(cancel));
        this
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.inner.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The backend for `interface`, or why there is none.
    fn backend(&self, interface: &str) -> Result<Arc<dyn Backend>, InspectError> {
        match interface {
            INSPECTOR => self
                .inner
                .inspector
                .clone()
                .ok_or(InspectError::InspectorDisabled),
            AGENT => match self.inner.agent {
                Some(_) => Ok(Arc::new(LocalAgent)),
                None => Err(InspectError::AgentUnavailable),
            },
            other => Err(InspectError::UnknownInterface(
                other.chars().take(64).collect(),
            )),
        }
    }

    /// Whether `interface` can inspect now.
    pub fn validate(&self, interface: &str) -> Result<(), InspectError> {
        self.backend(interface).map(drop)
    }

    /// Start inspecting `uuid` through `interface`. Nothing is recorded
    /// when the backend refuses.
    pub async fn start(&self, uuid: &str, interface: &str) -> Result<pb::Inspection, InspectError> {
        let uuid = canonical(uuid)?;
        let backend = self.backend(interface)?;
        let _starting = {
            let records = self.records();
            // An `agent` inspection holds nothing outside this record: a
            // new start (the conductor's, under the node's lock, after its
            // own timeout failed the node) replaces a waiting one.
            let waiting = records
                .get(&uuid)
                .is_some_and(|r| r.state == pb::InspectionState::Waiting)
                && interface != AGENT;
            if waiting || !self.starting().insert(uuid.clone()) {
                return Err(InspectError::AlreadyWaiting(uuid));
            }
            Starting {
                inspections: self,
                uuid: uuid.clone(),
            }
        };
        backend.start(&uuid).await?;
        let timeout = match (&self.inner.agent, interface) {
            (Some(a), AGENT) => a.inspect_wait_timeout,
            _ => self.inner.timing.inspect_wait_timeout,
        };
        let record = Record {
            interface: interface.to_owned(),
            state: pb::InspectionState::Waiting,
            error: String::new(),
            started_at: SystemTime::now(),
            finished_at: None,
            deadline: Instant::now() + timeout,
            timeout,
            abort_pending: false,
        };
        let shown = record.to_pb(&uuid);
        let replaced = self.records().insert(uuid.clone(), record);
        debug_assert!(
            replaced.is_none_or(|r| r.state != pb::InspectionState::Waiting || interface == AGENT)
        );
        crate::metrics::get().started(if interface == AGENT { AGENT } else { INSPECTOR });
        info!(node = %uuid, interface, "inspection started");
        let _ = self.inner.events.send(shown.clone());
        Ok(shown)
    }

    /// The node's latest inspection.
    pub fn get(&self, uuid: &str) -> Result<pb::Inspection, InspectError> {
        let uuid = canonical(uuid)?;
        self.records()
            .get(&uuid)
            .map(|r| r.to_pb(&uuid))
            .ok_or(InspectError::NotFound(uuid))
    }

    /// Abort a waiting inspection, the backend first: when it refuses, the
    /// inspection stays as it was; when it holds the node (inspector
    /// still starting the run), the inspection ends ABORTED now and the
    /// poller asks the backend again each period (so the conductor's lock
    /// is not held while inspector needs the node). An inspection that
    /// ended meanwhile is answered as it ended.
    pub async fn abort(&self, uuid: &str) -> Result<pb::Inspection, InspectError> {
        let uuid = canonical(uuid)?;
        let interface = {
            let records = self.records();
            let r = records
                .get(&uuid)
                .ok_or_else(|| InspectError::NotFound(uuid.clone()))?;
            if r.state != pb::InspectionState::Waiting {
                return Err(InspectError::NotWaiting {
                    uuid,
                    state: state_name(r.state),
                });
            }
            r.interface.clone()
        };
        let pending = match self.backend(&interface)?.abort(&uuid).await {
            Ok(()) => false,
            Err(e) if is_locked(&e) => {
                info!(node = %uuid, "the backend holds the node; the abort is asked again each period");
                true
            }
            Err(e) => return Err(e.into()),
        };
        let ended = self.finish(
            &uuid,
            pb::InspectionState::Aborted,
            "Inspection was aborted by request.".into(),
        );
        if let Some(shown) = ended {
            if let Some(r) = self.records().get_mut(&uuid) {
                r.abort_pending = pending;
            }
            return Ok(shown);
        }
        self.get(&uuid)
    }

    /// Every record now, and the changes from here on (subscribed first,
    /// so nothing falls between the two).
    pub fn watch(&self) -> (Vec<pb::Inspection>, broadcast::Receiver<pb::Inspection>) {
        let rx = self.inner.events.subscribe();
        let all = self
            .records()
            .iter()
            .map(|(uuid, r)| r.to_pb(uuid))
            .collect();
        (all, rx)
    }

    /// End a waiting record; `None` when it was not waiting any more (a
    /// result that raced an abort changes nothing).
    fn finish(
        &self,
        uuid: &str,
        state: pb::InspectionState,
        error: String,
    ) -> Option<pb::Inspection> {
        let shown = {
            let mut records = self.records();
            let r = records.get_mut(uuid)?;
            if r.state != pb::InspectionState::Waiting {
                return None;
            }
            r.state = state;
            r.error = error;
            r.finished_at = Some(SystemTime::now());
            r.to_pb(uuid)
        };
        crate::metrics::get().ended(state_name(state));
        match state {
            pb::InspectionState::Finished => info!(node = %uuid, "inspection finished"),
            _ => {
                warn!(node = %uuid, state = state_name(state), error = %shown.error, "inspection ended without success")
            }
        }
        let _ = self.inner.events.send(shown.clone());
        Some(shown)
    }

    async fn poll_loop(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.timing.status_check_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = self.poll_once() => {}
            }
        }
    }

    /// One round: every waiting node asked once, [`MAX_POLLS_IN_FLIGHT`]
    /// at a time.
    pub async fn poll_once(&self) {
        let now = Instant::now();
        // An `agent` inspection has nothing to poll: only its deadline.
        let due: Vec<(String, String, Option<Duration>, bool)> = self
            .records()
            .iter()
            .filter(|(_, r)| r.state == pb::InspectionState::Waiting || r.abort_pending)
            .map(|(u, r)| {
                let late = (now >= r.deadline).then_some(r.timeout);
                (u.clone(), r.interface.clone(), late, r.abort_pending)
            })
            .filter(|(_, i, late, _)| i != AGENT || late.is_some())
            .collect();
        futures::stream::iter(due)
            .for_each_concurrent(
                MAX_POLLS_IN_FLIGHT,
                |(uuid, interface, late, aborting)| async move {
                    match aborting {
                        true => self.abort_again(&uuid, &interface, late.is_some()).await,
                        false => self.poll_node(&uuid, &interface, late).await,
                    }
                },
            )
            .await;
    }

    /// Ask the backend again to abort what this service already ended as
    /// ABORTED, until it takes it (or refuses for another reason, or the
    /// deadline passed).
    async fn abort_again(&self, uuid: &str, interface: &str, late: bool) {
        let Ok(backend) = self.backend(interface) else {
            return;
        };
        let done = match backend.abort(uuid).await {
            Ok(()) => {
                info!(node = %uuid, "the backend took the abort");
                true
            }
            Err(e) if late => {
                warn!(node = %uuid, error = %e, "giving up on aborting at the backend");
                true
            }
            Err(e) if is_locked(&e) => false,
            Err(InspectorError::Refused { message, .. }) => {
                info!(node = %uuid, %message, "the backend refused the abort; its run is over");
                true
            }
            Err(e) => {
                warn!(node = %uuid, error = %e, "abort at the backend failed this period");
                false
            }
        };
        if done {
            if let Some(r) = self.records().get_mut(uuid) {
                r.abort_pending = false;
            }
        }
    }

    async fn poll_node(&self, uuid: &str, interface: &str, late: Option<Duration>) {
        let Ok(backend) = self.backend(interface) else {
            return;
        };
        if let Some(timeout) = late {
            let timeout = humantime::format_duration(timeout);
            if let Err(e) = backend.abort(uuid).await {
                warn!(node = %uuid, error = %e, "cannot abort a timed-out introspection");
            }
            self.finish(
                uuid,
                pb::InspectionState::Failed,
                format!(
                    "Timeout reached while inspecting the node (inspect_wait_timeout = {timeout})"
                ),
            );
            return;
        }
        match backend.status(uuid).await {
            Ok(Status::Waiting) => {}
            Ok(Status::Finished) => {
                self.finish(uuid, pb::InspectionState::Finished, String::new());
            }
            Ok(Status::Failed(e)) => {
                self.finish(uuid, pb::InspectionState::Failed, e);
            }
            // Inspector lost the node (a restart with a new database):
            // it will never finish.
            Err(InspectorError::Refused {
                status, message, ..
            }) if status == reqwest::StatusCode::NOT_FOUND => {
                self.finish(
                    uuid,
                    pb::InspectionState::Failed,
                    format!("ironic-inspector no longer knows the node: {message}"),
                );
            }
            // Anything else may pass (inspector restarting): asked again
            // next period, until the timeout.
            Err(e) => warn!(node = %uuid, error = %e, "introspection status unknown this period"),
        }
    }
}

#[cfg(test)]
mod tests;
