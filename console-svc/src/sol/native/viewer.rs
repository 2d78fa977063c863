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
//!            handle dropped (close), no traffic for terminal_timeout
//! ```
//!
//! The queue is bounded; when it is full the hub kicks the viewer instead of
//! waiting, so one slow viewer never holds up the others.

use std::fmt;
use std::io;
use std::sync::Mutex;
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
    idle_timeout: Duration,
}

/// A handle and a connection for `io`: output queue of `queue` chunks,
/// keystrokes to `input`, closed after `idle_timeout` without traffic (zero:
/// never).
pub(crate) fn pair(
    io: Box<dyn ViewerIo>,
    queue: usize,
    input: mpsc::Sender<Bytes>,
    idle_timeout: Duration,
) -> (ViewerHandle, ViewerConn) {
    let (out_tx, out_rx) = mpsc::channel(queue.max(1));
    let (kick_tx, kick_rx) = oneshot::channel();
    let handle = ViewerHandle {
        out: out_tx,
        kick: Some(kick_tx),
    };
    let conn = ViewerConn {
        io,
        out: out_rx,
        kick: kick_rx,
        input,
        idle_timeout,
    };
    (handle, conn)
}

enum End {
    ClosedByViewer,
    Failed(io::Error),
    Idle(Duration),
    Kicked(Bytes),
    Closed,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClosedByViewer => f.write_str("the viewer closed the connection"),
            End::Failed(e) => write!(f, "connection error: {e}"),
            End::Idle(t) => write!(f, "no traffic for {t:?}"),
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
        idle_timeout,
    } = conn;
    let _counted = crate::metrics::get().viewer("serial");
    let (mut rd, mut wr) = tokio::io::split(io);
    let last_traffic = Mutex::new(Instant::now());
    let end = tokio::select! {
        end = read_loop(&mut rd, &input, &last_traffic) => end,
        end = write_loop(&mut wr, &mut out, &last_traffic) => end,
        end = idle_watch(&last_traffic, idle_timeout) => end,
        msg = &mut kick => msg.map_or(End::Closed, End::Kicked),
    };
    if let End::Kicked(msg) = &end {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, wr.write_all(msg)).await;
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
) -> End {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => return End::ClosedByViewer,
            Ok(n) => {
                touch(last_traffic);
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

/// Tell a viewer the console cannot take it, then close.
pub(crate) async fn refuse(mut io: Box<dyn ViewerIo>, message: Bytes) {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        io.write_all(&message).await?;
        io.shutdown().await
    })
    .await;
}
