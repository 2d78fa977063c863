//! The native serial backend: console-svc listens on the console's port
//! itself and bridges every connection to one `ipmitool sol activate` that
//! runs under a raw pty while at least one viewer is attached.
//!
//! The manager (through [`ConsoleBackend`]) calls [`NativeBackend::start`] per
//! console and later [`RunningConsole::stop`]. Pieces:
//!
//! - `hub`: one task per console; owns the session, viewers, scrollback, log
//!   (`room`: which idle viewer makes room on a full console).
//! - `session`: the SOL session's states and its I/O events.
//! - `launcher`: `sol deactivate`, and `sol activate` under a pty ([`crate::sol::pty`])
//!   through the `console-svc sol-exec` helper, which asks this replica's
//!   activation gate ([`crate::sol::activation_gate`]) for its go and kills
//!   ipmitool when the last deadline it was given passes (a paused replica's
//!   session does not outlive its lease).
//! - `viewer`: one TCP connection, its bounded output queue and idle timeout.
//! - `ring`, `logfile`: scrollback and log ring; `<log_dir>/<node>.log`.
//! - `rmcp`: the `rmcp` backend: this hub with SOL spoken natively over
//!   RMCP+ (porthole-rmcp) instead of ipmitool, always on by default
//!   (`HubConfig::always_on`: activate with no viewer, never linger out,
//!   retry with backoff with nobody watching); `rmcp_probe`: its BMC probe
//!   (Get Chassis Status over RMCP+, in place of ipmitool's).
//!
//! SOL session lifecycle:
//!
//! ```text
//!        first viewer          banner          last viewer left       linger over
//!  idle ─────────────▶ activating ───▶ active ─────────────────▶ lingering ─────────▶ idle
//!   ▲   (fence check,       │             │  ▲   viewer came back    │ (sol deactivate,
//!   │    sol deactivate)    │ failed      │  └───────────────────────┘  terminate group)
//!   │                       ▼             │ ipmitool exited
//!   └── no viewers ──── backoff ◀─────────┘   Health::Failed, one line to viewers,
//!                        │  ▲                  retry after 1 s, 2 s, 4 s, ... ≤ retry_max_backoff
//!                        └──┘ delay over: activating again
//! ```
//!
//! Several viewers share the session: all see its output, all may type.
//! Bytes pass 8-bit clean, with no telnet processing.

mod hub;
mod launcher;
mod logfile;
mod ring;
pub(crate) mod rmcp;
mod rmcp_probe;
mod session;
mod viewer;

#[cfg(test)]
mod always_on_tests;
#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod eviction_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use self::hub::{HubConfig, HubHandle, Join};
use self::launcher::{Helper, IpmiLauncher};
use self::logfile::LogWriter;
use super::activation_gate::{ActivationGate, SharedGate};
use super::ipmitool::IpmiTool;
use super::sol_exec::GateRef;
use crate::backend::{
    bind_port, BackendError, ConsoleBackend, ConsoleContext, LogSnapshot, RunningConsole,
};
use crate::config::{Config, NativeConfig};
use crate::spec::NodeId;

/// What the native backend needs from the configuration.
#[derive(Clone, Debug)]
pub struct NativeSettings {
    pub native: NativeConfig,
    pub ipmitool: PathBuf,
    /// The `console-svc` binary, run as `console-svc sol-exec` around each
    /// `ipmitool sol activate`.
    pub helper: PathBuf,
    /// The longest an ipmitool command (or an activation) may take.
    pub subprocess_timeout: Duration,
    /// A viewer with no traffic either way for this long is closed; zero:
    /// never.
    pub terminal_timeout: Duration,
    pub retry_max_backoff: Duration,
}

impl NativeSettings {
    pub fn from_config(config: &Config) -> Self {
        let c = &config.console;
        Self {
            native: config.native.clone(),
            ipmitool: c.ipmitool_path.clone(),
            helper: super::sol_exec::helper_path(c.sol_exec_helper.as_deref()),
            subprocess_timeout: c.subprocess_timeout,
            terminal_timeout: c.terminal_timeout,
            retry_max_backoff: c.retry_max_backoff,
        }
    }
}

pub struct NativeBackend {
    settings: NativeSettings,
    /// Where each session's helper asks for its go; started with the first
    /// console.
    gate: SharedGate,
    /// Every console's log file writer; started with the first console
    /// that logs to a file.
    logs: std::sync::Mutex<Option<LogWriter>>,
}

impl NativeBackend {
    pub fn new(config: &Config) -> Self {
        Self::with_settings(NativeSettings::from_config(config))
    }

    pub fn with_settings(settings: NativeSettings) -> Self {
        Self {
            settings,
            gate: SharedGate::default(),
            logs: std::sync::Mutex::new(None),
        }
    }

    /// The backend's log writer, started on first use.
    fn log_writer(&self) -> Result<LogWriter, BackendError> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = &*logs {
            return Ok(w.clone());
        }
        let w = LogWriter::new(self.settings.native.log_file_max_bytes)
            .map_err(|e| BackendError::Failed(Box::new(e)))?;
        *logs = Some(w.clone());
        Ok(w)
    }

    fn hub_config(&self, node: &NodeId) -> Result<HubConfig, BackendError> {
        let n = &self.settings.native;
        let log_file = match &n.log_dir {
            Some(dir) => Some((self.log_writer()?, dir.join(format!("{node}.log")))),
            None => None,
        };
        Ok(HubConfig {
            scrollback_bytes: n.scrollback_bytes,
            log_ring_bytes: n.log_ring_bytes,
            log_file,
            linger: n.linger,
            always_on: n.always_on.unwrap_or(false),
            backend: "native",
            max_viewers: n.max_viewers,
            max_viewers_per_address: n.max_viewers_per_address,
            terminal_timeout: self.settings.terminal_timeout,
            terminal_silent_timeout: n.terminal_silent_timeout,
            retry_max_backoff: self.settings.retry_max_backoff,
            viewer_queue: hub::VIEWER_QUEUE_CHUNKS,
        })
    }
}

#[async_trait]
impl ConsoleBackend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        let span = tracing::info_span!(parent: None, "console", node = %ctx.node, port = ctx.listen.port());
        let listener = bind_port(ctx.listen).await?;
        span.in_scope(|| info!(listen = %ctx.listen, "console listening"));
        let s = &self.settings;
        let tool = IpmiTool::new(
            s.ipmitool.clone(),
            ctx.ipmi(self.name())?.clone(),
            s.subprocess_timeout,
            ctx.processes.clone(),
            ctx.fence.clone(),
        );
        let gate = self.gate.get(ctx.processes.dir())?;
        let helper = Helper {
            program: s.helper.clone(),
            gate: GateRef {
                socket: gate.path().to_owned(),
                node: ctx.node.to_string(),
                token: ctx.fence.ownership().token,
            },
        };
        gate.registry().register(ctx.fence.clone());
        let fence = ctx.fence.clone();
        let launcher = IpmiLauncher::new(tool, helper, ctx.processes.clone(), s.subprocess_timeout);
        let stop = ctx.cancel.child_token();
        let hub = hub::spawn(
            self.hub_config(&ctx.node)?,
            Arc::new(launcher),
            ctx.fence,
            ctx.health,
            stop.clone(),
            span.clone(),
        );
        let acceptor =
            tokio::spawn(accept_loop(listener, hub.joins(), stop.clone()).instrument(span));
        // sol deactivate, then SIGTERM → SIGKILL, with room to spare.
        let stop_bound =
            s.subprocess_timeout + 2 * ctx.processes.kill_timeout() + Duration::from_secs(1);
        Ok(Box::new(NativeConsole {
            hub: Some(hub),
            acceptor,
            stop,
            stop_bound,
            gated: (gate, fence),
        }))
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    joins: mpsc::Sender<Box<Join>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let join = Box::new(Join {
                    io: Box::new(stream),
                    peer: peer.to_string(),
                });
                if joins.send(join).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!(error = %e, "cannot accept a viewer");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A console served by the native backend.
struct NativeConsole {
    hub: Option<HubHandle>,
    acceptor: JoinHandle<()>,
    stop: CancellationToken,
    stop_bound: Duration,
    /// The gate this console's sessions ask (kept open while it runs) and
    /// its claim there, dropped once it stopped.
    gated: (Arc<ActivationGate>, crate::coordinator::Fence),
}

#[async_trait]
impl RunningConsole for NativeConsole {
    async fn stop(mut self: Box<Self>) {
        self.stop.cancel();
        let _ = (&mut self.acceptor).await;
        if let Some(hub) = self.hub.take() {
            hub.shutdown(self.stop_bound).await;
        }
        self.gated.0.registry().deregister(&self.gated.1);
    }

    fn log(&self, max_bytes: usize) -> Option<LogSnapshot> {
        self.hub.as_ref().map(|h| h.log(max_bytes))
    }
}

impl Drop for NativeConsole {
    /// Dropped without `stop`: the hub still winds down on its own.
    fn drop(&mut self) {
        self.stop.cancel();
        self.gated.0.registry().deregister(&self.gated.1);
    }
}
