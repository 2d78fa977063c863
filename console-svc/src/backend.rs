//! The backend contract: what the manager asks of a console backend and what
//! a backend gets to serve one console.
//!
//! The manager ([`crate::manager`]) owns console lifecycles and calls
//! [`ConsoleBackend::start`]; the serial backends ([`crate::sol::native`],
//! [`crate::sol::socat`]) and the VNC backend ([`crate::vnc::backend`])
//! implement it. Each backend has its own error type (`sol::SolError`,
//! `vnc::VncError`) and converts it into the one [`BackendError`] the
//! contract returns; `error.rs` turns that into the gRPC-facing error.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{CoordError, Fence};
use crate::process::ProcessTable;
use crate::spec::{ConsoleKind, IpmiTarget, NodeId, Target};

/// Why a backend could not start (or keep serving) a console.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The manager tries another port of its range on this one.
    #[error("port {addr} is already in use by another program")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("a {backend} backend cannot serve a {kind:?} console")]
    WrongKind {
        backend: &'static str,
        kind: ConsoleKind,
    },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// The claim's lease is not known valid: no BMC action was taken.
    #[error(transparent)]
    Fenced(#[from] CoordError),
    /// The backend's own failure (ipmitool's or socat's words, ...).
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl BackendError {
    /// The backend's own error behind [`BackendError::Failed`], if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Failed(inner) => inner.downcast_ref(),
            _ => None,
        }
    }
}

/// How a running console is doing, as its backend sees it. The manager turns
/// this into the console's state and last_error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    Failed(String),
}

/// Everything a backend needs to serve one console.
pub struct ConsoleContext {
    pub node: NodeId,
    pub target: Target,
    /// Where the console's port listens.
    pub listen: SocketAddr,
    /// The backend publishes its health here.
    pub health: watch::Sender<Health>,
    /// Cancelled when the service shuts down; `stop` is the normal way out.
    pub cancel: CancellationToken,
    /// Checked before every SOL activation.
    pub fence: Fence,
    pub processes: Arc<ProcessTable>,
}

impl ConsoleContext {
    /// The BMC of a serial console; `backend` names the caller for the error.
    pub fn ipmi(&self, backend: &'static str) -> Result<&IpmiTarget, BackendError> {
        match &self.target {
            Target::Ipmi(ipmi) => Ok(ipmi),
            other => Err(BackendError::WrongKind {
                backend,
                kind: other.kind(),
            }),
        }
    }
}

/// Bind a console's port. The port allocator already gave it to this
/// console, so `EADDRINUSE` is retried for up to a second: a child process
/// forked a moment ago (for an ipmitool probe) holds copies of our sockets
/// until its exec, which is what a quick disable/enable (nova's console
/// reset) runs into. Anything still holding the port after that is foreign.
pub async fn bind_port(addr: SocketAddr) -> Result<tokio::net::TcpListener, BackendError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(BackendError::PortInUse { addr });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(BackendError::Listen { addr, source }),
        }
    }
}

/// A snapshot of a console's in-memory log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSnapshot {
    pub data: Vec<u8>,
    /// Older output was dropped (ring full, or `max_bytes` cut it).
    pub truncated: bool,
}

#[async_trait]
pub trait ConsoleBackend: Send + Sync + 'static {
    /// `native`, `socat` or `vnc`, reported in the API.
    fn name(&self) -> &'static str;

    /// Start serving; returns once `ctx.listen` accepts connections.
    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError>;

    /// This backend's own probe of a serial console's BMC, if it has one
    /// (`rmcp` asks over RMCP+); otherwise the manager runs ipmitool's
    /// `chassis power status`.
    fn bmc_probe(&self, _target: &IpmiTarget, _fence: &Fence) -> Option<Box<dyn BmcProbe>> {
        None
    }
}

/// A check that a console's BMC answers (a power status query, never SOL),
/// which the manager's supervisor runs when the console starts and again
/// while it fails. A BMC action: taken only under the console's claim.
#[async_trait]
pub trait BmcProbe: Send + Sync {
    async fn probe(&self) -> Result<(), BackendError>;
}

#[async_trait]
pub trait RunningConsole: Send + Sync {
    /// Close the port, end the SOL session cleanly, leave no process behind.
    async fn stop(self: Box<Self>);

    /// The newest `max_bytes` (0: all) of what the node printed, if this
    /// backend keeps a log.
    fn log(&self, max_bytes: usize) -> Option<LogSnapshot>;
}
