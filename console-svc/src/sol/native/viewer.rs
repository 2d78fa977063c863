//! One viewer: a TCP connection (nova-serialproxy, socat, telnet, ...) to a
//! console's port. Bytes pass unchanged both ways; no telnet processing.
//!
//! The hub owns a [`ViewerHandle`]; the connection is served by [`serve`],
//! spawned by the hub, in a task of its own:
//!
//! ```text
//!   socket ──read──▶ shared input channel ──▶ hub ──▶ pty
//!   socket ◀─write── bounded queue (scrollback first) ◀── hub fan-out
//!   ends on: EOF/error, queue closed, kick (message, then close),
//!            handle dropped (close), no traffic for terminal_timeout,
//!            nothing sent within terminal_silent_timeout of connecting
//! ```
//!
//! The handle sees when the viewer last sent something ([`ViewerHandle::idle_since`]),
//! which the hub uses to pick the viewer that makes room for a new one.
//!
//! The queue is bounded; when it is full the hub kicks the viewer instead of
//! waiting, so one slow viewer never holds up the others.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::info;

/// Longest wait for a last message to a viewer that is being closed.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 4096;

/// A viewer's connection.
pub(crate) trait ViewerIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ViewerIo for T {}

/// The hub's side of one viewer.
pub(crate) struct ViewerHandle {
    out: mpsc::Sender<Bytes>,
    kick: Option<oneshot::Sender<Bytes>>,
    activity: Arc<Activity>,
    /// The peer's address without its port (the whole peer string when it
    /// is not a socket address).
    host: String,
}

/// When a viewer connected and when it last sent a byte.
struct Activity {
    connected: Instant,
    last_input: Mutex<Option<Instant>>,
}

impl Activity {
    fn typed(&self) {
        *self.last_input.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn last_input(&self) -> Option<Instant> {
        *self.last_input.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The viewer's queue is full: it fell too far behind.
#[derive(Debug)]
pub(crate) struct Lagging;

impl ViewerHandle {
    /// Queue output without waiting. A viewer that is already leaving
    /// counts as fine: the hub reaps it when its task ends.
    pub(crate) fn send(&self, data: Bytes) -> Result<(), Lagging> {
        match self.out.try_send(data) {
            Err(mpsc::error::TrySendError::Full(_)) => Err(Lagging),
            _ => Ok(()),
        }
    }

    /// Has the viewer's task ended?
    pub(crate) fn is_gone(&self) -> bool {
        self.out.is_closed()
    }

    /// Since when the viewer has sent nothing: its last byte, or its
    /// connection when it never sent one.
    pub(crate) fn idle_since(&self) -> Instant {
        self.activity
            .last_input()
            .unwrap_or(self.activity.connected)
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Write `message` to the viewer (skipping whatever it has not been sent
    /// yet), then close the connection.
    pub(crate) fn kick(mut self, message: Bytes) {
        if let Some(kick) = self.kick.take() {
            let _ = kick.send(message);
        }
    }
}

/// The viewer's side, handed to [`serve`].
pub(crate) struct ViewerConn {
    io: Box<dyn ViewerIo>,
    out: mpsc::Receiver<Bytes>,
    kick: oneshot::Receiver<Bytes>,
    input: mpsc::Sender<Bytes>,
    timeouts: Timeouts,
    activity: Arc<Activity>,
}

/// When a viewer is closed for doing nothing; zero: never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// No traffic either way for this long (`terminal_timeout`).
    pub(crate) idle: Duration,
    /// Nothing sent at all this long after connecting
    /// (`terminal_silent_timeout`).
    pub(crate) silent: Duration,
}

/// A handle and a connection for `io` from `peer`: output queue of `queue`
/// chunks, keystrokes to `input`, closed as `timeouts` say.
pub(crate) fn pair(
    io: Box<dyn ViewerIo>,
    peer: &str,
    queue: usize,
    input: mpsc::Sender<Bytes>,
    timeouts: Timeouts,
) -> (ViewerHandle, ViewerConn) {
    let (out_tx, out_rx) = mpsc::channel(queue.max(1));
    let (kick_tx, kick_rx) = oneshot::channel();
    let activity = Arc::new(Activity {
        connected: Instant::now(),
        last_input: Mutex::new(None),
    });
    let handle = ViewerHandle {
        out: out_tx,
        kick: Some(kick_tx),
        activity: activity.clone(),
        host: peer_host(peer),
    };
    let conn = ViewerConn {
        io,
        out: out_rx,
        kick: kick_rx,
        input,
        timeouts,
        activity,
    };
    (handle, conn)
}

/// `peer`'s address without the port.
pub(crate) fn peer_host(peer: &str) -> String {
    peer.parse::<SocketAddr>()
        .map_or_else(|_| peer.to_owned(), |a| a.ip().to_string())
}

enum End {
    ClosedByViewer,
    Failed(io::Error),
    Idle(Duration),
    Silent(Duration),
    Kicked(Bytes),
    Closed,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClosedByViewer => f.write_str("the viewer closed the connection"),
            End::Failed(e) => write!(f, "connection error: {e}"),
            End::Idle(t) => write!(f, "no traffic for {t:?}"),
            End::Silent(t) => write!(f, "nothing sent within {t:?} of connecting"),
            End::Kicked(_) => f.write_str("disconnected by the console"),
            End::Closed => f.write_str("the console closed"),
        }
    }
}

/// Serve one viewer until it leaves or is sent away.
pub(crate) async fn serve(conn: ViewerConn) {
    let ViewerConn {
        io,
        mut out,
        mut kick,
        input,
        timeouts,
        activity,
    } = conn;
    let _counted = crate::metrics::get().viewer("serial");
    let (mut rd, mut wr) = tokio::io::split(io);
    let last_traffic = Mutex::new(Instant::now());
    let end = tokio::select! {
        // A kick first: it drops the output queue too, which write_loop
        // would otherwise report as a plain close, losing the message.
        biased;
        msg = &mut kick => msg.map_or(End::Closed, End::Kicked),
        end = read_loop(&mut rd, &input, &last_traffic, &activity) => end,
        end = write_loop(&mut wr, &mut out, &last_traffic) => end,
        end = idle_watch(&last_traffic, timeouts.idle) => end,
        end = silent_watch(&activity, timeouts.silent) => end,
    };
    let goodbye = match &end {
        End::Kicked(msg) => Some(msg.clone()),
        End::Silent(t) => Some(Bytes::from(format!(
            "\r\n[porthole: disconnected: nothing was sent within {}s of connecting]\r\n",
            t.as_secs()
        ))),
        _ => None,
    };
    if let Some(msg) = goodbye {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, wr.write_all(&msg)).await;
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, wr.shutdown()).await;
    info!(reason = %end, "viewer left");
}

fn touch(last_traffic: &Mutex<Instant>) {
    *last_traffic.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

async fn read_loop(
    rd: &mut (impl AsyncRead + Unpin),
    input: &mpsc::Sender<Bytes>,
    last_traffic: &Mutex<Instant>,
    activity: &Activity,
) -> End {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => return End::ClosedByViewer,
            Ok(n) => {
                touch(last_traffic);
                activity.typed();
                crate::metrics::get().bytes_to_node("serial", n);
                if input.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return End::Closed;
                }
            }
            Err(e) => return End::Failed(e),
        }
    }
}

async fn write_loop(
    wr: &mut (impl AsyncWrite + Unpin),
    out: &mut mpsc::Receiver<Bytes>,
    last_traffic: &Mutex<Instant>,
) -> End {
    while let Some(data) = out.recv().await {
        if let Err(e) = wr.write_all(&data).await {
            return End::Failed(e);
        }
        crate::metrics::get().bytes_to_viewer("serial", data.len());
        touch(last_traffic);
    }
    End::Closed
}

async fn idle_watch(last_traffic: &Mutex<Instant>, timeout: Duration) -> End {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let deadline = *last_traffic.lock().unwrap_or_else(|e| e.into_inner()) + timeout;
        if Instant::now() >= deadline {
            return End::Idle(timeout);
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Ends the viewer if it has sent nothing `timeout` after connecting.
async fn silent_watch(activity: &Activity, timeout: Duration) -> End {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    tokio::time::sleep_until(activity.connected + timeout).await;
    if activity.last_input().is_none() {
        return End::Silent(timeout);
    }
    std::future::pending().await
}
