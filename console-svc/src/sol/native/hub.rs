//! The hub: one task per console that owns its SOL session, its viewers,
//! its scrollback, log ring and log file.
//!
//! Callers: `NativeBackend::start` spawns it and feeds it accepted
//! connections through a [`HubHandle`]; unit tests feed it in-memory streams
//! and a fake [`SolLauncher`].
//!
//! ```text
//!   viewers ──keystrokes──▶ input channel ──▶ hub ──▶ session (pty) ──▶ BMC
//!   viewers ◀──bounded queues── fan-out ◀── hub ◀── session output
//!                                            ├──▶ ring: its newest scrollback_bytes
//!                                            │    are replayed on attach, its newest
//!                                            │    log_ring_bytes are RunningConsole::log
//!                                            └──▶ log file
//! ```
//!
//! Session lifecycle (see `session.rs` for the full diagram):
//! idle → activating → active → lingering → idle; a failure goes to backoff,
//! which retries while viewers remain.
//!
//! Every BMC call (deactivate, activate, the deactivate that ends a session)
//! is made only while [`Fence::permit`] says the claim's lease is valid at
//! that instant; otherwise the hub only ends its local ipmitool. A replica
//! paused past its deadline therefore never deactivates the SOL session of
//! the replica that took the console over (the launcher's ipmitool checks the
//! gate again at spawn).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument, Span};

use super::launcher::{SolLauncher, SolSession};
use super::logfile::{LogFile, LogWriter};
use super::ring::ByteRing;
use super::session::{Active, Sol, SolEvent};
use super::viewer::{self, ViewerHandle, ViewerIo};
use crate::backend::{Health, LogSnapshot};
use crate::backoff::Backoff;
use crate::coordinator::Fence;

#[path = "room.rs"]
mod room;

/// Keystrokes held while the session is (re)activating, or while the node
/// side is slow to take them.
const MAX_PENDING_INPUT: usize = 4096;
/// Chunks of output a viewer may fall behind before it is disconnected.
pub(crate) const VIEWER_QUEUE_CHUNKS: usize = 256;
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// What one hub needs to know.
#[derive(Clone, Debug)]
pub(crate) struct HubConfig {
    pub(crate) scrollback_bytes: usize,
    pub(crate) log_ring_bytes: usize,
    /// The backend's log writer and `<log_dir>/<node>.log`.
    pub(crate) log_file: Option<(LogWriter, PathBuf)>,
    pub(crate) linger: Duration,
    /// Keep the session up (and retrying) with no viewer attached.
    pub(crate) always_on: bool,
    /// The backend's name in metrics (`native`, `rmcp`).
    pub(crate) backend: &'static str,
    pub(crate) max_viewers: usize,
    /// Viewers from one address at once; 0: no limit of its own.
    pub(crate) max_viewers_per_address: usize,
    pub(crate) terminal_timeout: Duration,
    /// A viewer that sent nothing this long after connecting is closed.
    pub(crate) terminal_silent_timeout: Duration,
    pub(crate) retry_max_backoff: Duration,
    pub(crate) viewer_queue: usize,
}

/// A new connection for the hub.
pub(crate) struct Join {
    pub(crate) io: Box<dyn ViewerIo>,
    pub(crate) peer: String,
}

/// The console's side of a running hub.
pub(crate) struct HubHandle {
    /// What [`HubHandle::log`] returns at most (the ring may keep more, for
    /// the scrollback).
    log_ring_bytes: usize,
    /// Boxed: the channel's first block (allocated with it, held by every
    /// console) is then 32 pointers, not 32 joins.
    joins: mpsc::Sender<Box<Join>>,
    log: Arc<Mutex<ByteRing>>,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl HubHandle {
    /// Where to send new connections.
    pub(crate) fn joins(&self) -> mpsc::Sender<Box<Join>> {
        self.joins.clone()
    }

    /// Attach a viewer (tests; the acceptor uses [`HubHandle::joins`]).
    #[cfg(test)]
    pub(crate) async fn join(&self, io: impl ViewerIo, peer: &str) {
        let join = Box::new(Join {
            io: Box::new(io),
            peer: peer.to_owned(),
        });
        self.joins.send(join).await.expect("hub running");
    }

    pub(crate) fn log(&self, max_bytes: usize) -> LogSnapshot {
        let cap = self.log_ring_bytes;
        let ring = lock(&self.log);
        if cap == 0 {
            return LogSnapshot {
                data: Vec::new(),
                truncated: ring.has_output(),
            };
        }
        let max = if max_bytes == 0 {
            cap
        } else {
            max_bytes.min(cap)
        };
        ring.snapshot(max)
    }

    /// Stop the hub: viewers are closed and the session ends cleanly. After
    /// `bound`, the hub is aborted (its processes are killed on drop).
    pub(crate) async fn shutdown(mut self, bound: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(bound, &mut self.task).await.is_err() {
            warn!(
                ?bound,
                "console did not stop in time; killing its processes"
            );
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

fn lock(ring: &Mutex<ByteRing>) -> std::sync::MutexGuard<'_, ByteRing> {
    ring.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start a hub in `span`; it runs until `stop` is cancelled.
pub(crate) fn spawn(
    cfg: HubConfig,
    launcher: Arc<dyn SolLauncher>,
    fence: Fence,
    health: watch::Sender<Health>,
    stop: CancellationToken,
    span: Span,
) -> HubHandle {
    let (joins_tx, joins_rx) = mpsc::channel(16);
    // One ring for both: the scrollback is the newest part of the log.
    let ring_bytes = cfg.log_ring_bytes.max(cfg.scrollback_bytes);
    let log = Arc::new(Mutex::new(ByteRing::new(ring_bytes)));
    let log_ring_bytes = cfg.log_ring_bytes;
    let hub = Hub {
        log_file: cfg.log_file.clone().map(|(w, p)| w.file(p)),
        backoff: Backoff::new(
            RETRY_FIRST.min(cfg.retry_max_backoff),
            cfg.retry_max_backoff,
        ),
        cfg,
        launcher,
        fence,
        health,
        joins: joins_rx,
        keys: None,
        viewers: HashMap::new(),
        tasks: JoinSet::new(),
        next_viewer: 0,
        log: log.clone(),
        sol: Sol::Idle,
        pending_input: BytesMut::new(),
        stop: stop.clone(),
    };
    let task = tokio::spawn(hub.run().instrument(span));
    HubHandle {
        log_ring_bytes,
        joins: joins_tx,
        log,
        task,
        stop,
    }
}

struct Hub {
    cfg: HubConfig,
    launcher: Arc<dyn SolLauncher>,
    fence: Fence,
    health: watch::Sender<Health>,
    joins: mpsc::Receiver<Box<Join>>,
    /// Keystrokes from the viewers; made for the first viewer (a console
    /// nobody ever watched holds no queue).
    keys: Option<(mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)>,
    viewers: HashMap<u64, ViewerHandle>,
    tasks: JoinSet<()>,
    next_viewer: u64,
    /// Recent output: the scrollback and the log ring in one.
    log: Arc<Mutex<ByteRing>>,
    log_file: Option<LogFile>,
    sol: Sol,
    backoff: Backoff,
    pending_input: BytesMut,
    stop: CancellationToken,
}

impl Hub {
    async fn run(mut self) {
        if self.cfg.always_on {
            self.begin_activation();
        }
        loop {
            // Keystrokes wait in the viewers' sockets rather than being
            // dropped while the session comes up or the node side is slow.
            let take_input =
                !self.sol.holds_input() || self.pending_input.len() < MAX_PENDING_INPUT;
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(join) = self.joins.recv() => self.on_join(*join),
                Some(_) = self.tasks.join_next() => self.reap_viewers(),
                Some(data) = next_keys(&mut self.keys), if take_input => self.on_input(&data),
                // Boxed: the hub's task then holds only the waiting state,
                // not these rarer ones (an idle console's memory).
                event = self.sol.next_event(&self.pending_input) => Box::pin(self.on_sol_event(event)).await,
            }
        }
        Box::pin(self.shutdown()).await;
    }

    fn on_join(&mut self, join: Join) {
        self.make_room_for(&join.peer);
        let id = self.next_viewer;
        self.next_viewer += 1;
        let timeouts = viewer::Timeouts {
            idle: self.cfg.terminal_timeout,
            silent: self.cfg.terminal_silent_timeout,
        };
        let (handle, conn) = viewer::pair(
            join.io,
            &join.peer,
            self.cfg.viewer_queue,
            self.keys.get_or_insert_with(|| mpsc::channel(64)).0.clone(),
            timeouts,
        );
        let scrollback = match self.cfg.scrollback_bytes {
            0 => Vec::new(),
            n => lock(&self.log).snapshot(n).data,
        };
        if !scrollback.is_empty() {
            let _ = handle.send(Bytes::from(scrollback));
        }
        if let Sol::Backoff { until, reason } = &self.sol {
            let _ = handle.send(failure_notice(
                reason,
                until.saturating_duration_since(Instant::now()),
            ));
        }
        let span = tracing::info_span!("viewer", peer = %join.peer, id);
        span.in_scope(|| info!(viewers = self.viewers.len() + 1, "viewer attached"));
        self.tasks.spawn(viewer::serve(conn).instrument(span));
        self.viewers.insert(id, handle);
        match &mut self.sol {
            Sol::Idle => self.begin_activation(),
            Sol::Active(active) => active.linger_until = None,
            Sol::Activating(_) | Sol::Backoff { .. } => {}
        }
    }

    /// Forget viewers whose task has ended; mind the session if none is left.
    fn reap_viewers(&mut self) {
        self.viewers.retain(|_, v| !v.is_gone());
        self.viewers_changed();
    }

    fn viewers_changed(&mut self) {
        if !self.viewers.is_empty() || self.cfg.always_on {
            return;
        }
        match &mut self.sol {
            Sol::Active(active) if active.linger_until.is_none() => {
                info!(linger = ?self.cfg.linger, "last viewer left; SOL session lingers");
                active.linger_until = Some(Instant::now() + self.cfg.linger);
            }
            Sol::Backoff { .. } => {
                info!("last viewer left; no more SOL retries until one attaches");
                self.sol = Sol::Idle;
            }
            _ => {}
        }
    }

    fn on_input(&mut self, data: &[u8]) {
        match self.sol {
            // Taken only while below MAX_PENDING_INPUT (see `run`), so this
            // holds at most that plus one read of a viewer.
            Sol::Active(_) | Sol::Activating(_) => self.pending_input.extend_from_slice(data),
            // Nobody to type to: keystrokes are dropped, as on a dead line.
            Sol::Idle | Sol::Backoff { .. } => {}
        }
    }

    async fn on_sol_event(&mut self, event: SolEvent) {
        match event {
            SolEvent::Activated(Ok(session)) => self.on_activated(session),
            SolEvent::Activated(Err(e)) => {
                crate::metrics::get().sol_activation_failed(self.cfg.backend);
                self.on_failure(e.to_string())
            }
            SolEvent::Output(data) => {
                if let Sol::Active(active) = &mut self.sol {
                    active.note_output(&data);
                }
                self.on_output(data);
            }
            SolEvent::Wrote(n) => self.pending_input.advance(n),
            SolEvent::Ended(error) => {
                if let Sol::Active(active) = std::mem::replace(&mut self.sol, Sol::Idle) {
                    let why = active.end(false, error).await;
                    self.on_failure(format!("SOL session ended: {why}"));
                }
            }
            SolEvent::LingerOver => {
                if let Sol::Active(active) = std::mem::replace(&mut self.sol, Sol::Idle) {
                    info!("nobody came back; ending the SOL session");
                    let clean = self.may_touch_bmc("ending the lingering session");
                    active.end(clean, None).await;
                    self.pending_input.clear();
                }
            }
            SolEvent::BackoffOver => self.begin_activation(),
        }
    }

    fn begin_activation(&mut self) {
        if self.viewers.is_empty() && !self.cfg.always_on {
            self.sol = Sol::Idle;
            return;
        }
        info!("activating SOL");
        crate::metrics::get().sol_activation(self.cfg.backend);
        let fence = self.fence.clone();
        let launcher = self.launcher.clone();
        self.sol = Sol::Activating(Box::pin(async move {
            fence.check().await?;
            fence.permit()?;
            launcher.deactivate().await?;
            fence.permit()?;
            launcher.activate().await
        }));
    }

    /// Whether the BMC may be told anything now (the lease gate); when not,
    /// says so and what is done instead.
    fn may_touch_bmc(&self, doing: &str) -> bool {
        match self.fence.permit() {
            Ok(_) => true,
            Err(e) => {
                warn!(reason = %e, "{doing}: no sol deactivate, only the local ipmitool is ended");
                false
            }
        }
    }

    fn on_activated(&mut self, session: SolSession) {
        info!("SOL session active");
        self.health.send_if_modified(|h| set(h, Health::Ok));
        self.backoff.reset();
        let (greeting, early) = (session.greeting.clone(), session.early_output.clone());
        let linger_until = (self.viewers.is_empty() && !self.cfg.always_on)
            .then(|| Instant::now() + self.cfg.linger);
        self.sol = Sol::Active(Active::new(session, linger_until));
        if !greeting.is_empty() {
            self.fan_out(greeting);
        }
        if !early.is_empty() {
            if let Sol::Active(active) = &mut self.sol {
                active.note_output(&early);
            }
            self.on_output(early);
        }
    }

    fn on_failure(&mut self, message: String) {
        warn!(error = %message, "SOL session failed");
        self.health
            .send_if_modified(|h| set(h, Health::Failed(message.clone())));
        self.pending_input.clear();
        if self.viewers.is_empty() && !self.cfg.always_on {
            self.sol = Sol::Idle;
            return;
        }
        let delay = self.backoff.next_delay();
        self.fan_out(failure_notice(&message, delay));
        self.sol = Sol::Backoff {
            until: Instant::now() + delay,
            reason: message,
        };
    }

    /// The node printed `data`.
    fn on_output(&mut self, data: Bytes) {
        lock(&self.log).push(&data);
        if let Some(file) = &mut self.log_file {
            file.write(data.clone());
        }
        self.fan_out(data);
    }

    /// Queue `data` for every viewer; disconnect the ones too far behind.
    fn fan_out(&mut self, data: Bytes) {
        let lagging: Vec<u64> = self
            .viewers
            .iter()
            .filter(|(_, v)| v.send(data.clone()).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in lagging {
            if let Some(v) = self.viewers.remove(&id) {
                warn!(viewer = id, "viewer fell too far behind; disconnecting it");
                v.kick(Bytes::from_static(
                    b"\r\n[porthole: disconnected: this connection fell too far behind the console output]\r\n",
                ));
            }
        }
        self.viewers_changed();
    }

    async fn shutdown(mut self) {
        info!("stopping console");
        self.viewers.clear();
        match std::mem::replace(&mut self.sol, Sol::Idle) {
            Sol::Activating(activation) => {
                drop(activation);
                if self.may_touch_bmc("stopping while activating") {
                    if let Err(e) = self.launcher.deactivate().await {
                        warn!(error = %e, "sol deactivate failed while stopping");
                    }
                }
            }
            Sol::Active(active) => {
                let clean = self.may_touch_bmc("stopping");
                active.end(clean, None).await;
            }
            Sol::Idle | Sol::Backoff { .. } => {}
        }
        self.tasks.shutdown().await;
        info!("console stopped");
    }
}

/// The next keystrokes from any viewer; never, before the first viewer.
async fn next_keys(
    keys: &mut Option<(mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)>,
) -> Option<Bytes> {
    match keys {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn set(health: &mut Health, new: Health) -> bool {
    if *health == new {
        return false;
    }
    *health = new;
    true
}

fn failure_notice(message: &str, retry_in: Duration) -> Bytes {
    Bytes::from(format!(
        "\r\n[porthole: SOL session failed: {message}; retrying in {}s]\r\n",
        retry_in.as_secs_f64().ceil()
    ))
}
