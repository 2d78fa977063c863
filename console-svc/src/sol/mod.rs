//! Serial-over-LAN consoles: the backend trait and what backends share.
//!
//! The manager owns console lifecycles; a backend only knows how to serve one
//! console's TCP port and bridge it to `ipmitool sol activate`:
//!
//! - [`native`] (default): console-svc listens itself and runs ipmitool under a
//!   pty only while viewers are attached; scrollback, log ring, log file.
//! - [`socat`]: one supervised `socat TCP-LISTEN:... EXEC:ipmitool...` per
//!   console, the process layout of Ironic's socat console.
//!
//! Both build ipmitool's argv in [`ipmitool`], hand it the password through a
//! sealed memfd (never argv, never the environment), run `sol deactivate`
//! before every activation, and record the processes they start in the
//! [`crate::process::ProcessTable`] so a restart can clean up after a crash.
//! Both take every BMC action only through the claim's lease gate
//! ([`crate::coordinator::Fence::permit`]); socat's per-connection helper
//! ([`sol_exec`]) asks for it over [`activation_gate`].

pub mod activation_gate;
pub mod ipmitool;
pub mod native;
pub mod pty;
pub mod socat;
pub mod socat_slot;
pub mod sol_exec;

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

#[derive(Debug, thiserror::Error)]
pub enum SolError {
    #[error("port {addr} is already in use by another program")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error("{program} exited before the console port accepted connections: {detail}")]
    EarlyExit {
        program: &'static str,
        detail: String,
    },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// ipmitool talked to (or failed to reach) the BMC; `message` is its own
    /// last words, trimmed.
    #[error("BMC {bmc}: {message}")]
    Bmc { bmc: String, message: String },
    #[error(transparent)]
    Fenced(#[from] CoordError),
    #[error("a {backend} backend cannot serve a {kind:?} console")]
    WrongKind {
        backend: &'static str,
        kind: ConsoleKind,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
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
    pub fn ipmi(&self, backend: &'static str) -> Result<&IpmiTarget, SolError> {
        match &self.target {
            Target::Ipmi(ipmi) => Ok(ipmi),
            other => Err(SolError::WrongKind {
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
pub async fn bind_port(addr: SocketAddr) -> Result<tokio::net::TcpListener, SolError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(SolError::PortInUse { addr });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(SolError::Listen { addr, source }),
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
    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, SolError>;
}

#[async_trait]
pub trait RunningConsole: Send + Sync {
    /// Close the port, end the SOL session cleanly, leave no process behind.
    async fn stop(self: Box<Self>);

    /// The newest `max_bytes` (0: all) of what the node printed, if this
    /// backend keeps a log.
    fn log(&self, max_bytes: usize) -> Option<LogSnapshot>;
}
