//! The SOL session's state as the hub sees it, and the one future the hub
//! polls to learn what the session did next.
//!
//! ```text
//!          first viewer              banner               last viewer left
//!  Idle ───────────────▶ Activating ───────▶ Active ───────────────────────▶ Active(lingering)
//!   ▲                        │                 │  ▲      viewer came back        │
//!   │                        │ failed          │  └──────────────────────────────┘
//!   │      no viewers left   ▼                 │ ipmitool exited                 │ linger over:
//!   ├─────────────────── Backoff ◀─────────────┘                                 │ deactivate +
//!   │                        │ delay over, viewers left: Activating               │ terminate
//!   └─────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Reads and writes are cancel-safe (`read_output`, `write`), so the hub can
//! poll [`Sol::next_event`] inside a `select!` and drop it whenever something
//! else happens first. Output is read through a buffer on the stack of one
//! poll: a waiting session holds no read buffer.

use std::future::{pending, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::time::{sleep_until, Instant};

use super::launcher::{SessionControl, SolIo, SolSession};
use super::ring::ByteRing;
use crate::sol::SolError;

/// The most output one read takes.
const READ_CHUNK: usize = 8192;
/// Output kept to explain why a session ended.
const TAIL_BYTES: usize = 1024;

pub(crate) enum Sol {
    Idle,
    Activating(BoxFuture<'static, Result<SolSession, SolError>>),
    Active(Active),
    Backoff { until: Instant, reason: String },
}

/// A session that is up.
pub(crate) struct Active {
    reader: ReadHalf<Box<dyn SolIo>>,
    writer: WriteHalf<Box<dyn SolIo>>,
    control: Box<dyn SessionControl>,
    tail: ByteRing,
    /// Set while no viewer is attached: when the session ends.
    pub(crate) linger_until: Option<Instant>,
}

/// What the session did.
pub(crate) enum SolEvent {
    Activated(Result<SolSession, SolError>),
    Output(Bytes),
    /// `n` bytes of pending input reached the node side.
    Wrote(usize),
    /// The session's stream ended (ipmitool exited) or failed.
    Ended(Option<io::Error>),
    LingerOver,
    BackoffOver,
}

impl Sol {
    /// Keystrokes are kept for the node (up or coming up), not dropped.
    pub(crate) fn holds_input(&self) -> bool {
        matches!(self, Sol::Active(_) | Sol::Activating(_))
    }

    /// Wait for the session's next event; `pending_input` is written to the
    /// node side meanwhile. Never completes while idle.
    pub(crate) async fn next_event(&mut self, pending_input: &[u8]) -> SolEvent {
        match self {
            Sol::Idle => pending().await,
            Sol::Activating(activation) => SolEvent::Activated(activation.await),
            Sol::Backoff { until, .. } => {
                sleep_until(*until).await;
                SolEvent::BackoffOver
            }
            Sol::Active(active) => active.next_event(pending_input).await,
        }
    }
}

impl Active {
    /// The session's stream and control; its greeting and early output are
    /// the caller's to deliver.
    pub(crate) fn new(session: SolSession, linger_until: Option<Instant>) -> Self {
        let (reader, writer) = tokio::io::split(session.io);
        Self {
            reader,
            writer,
            control: session.control,
            tail: ByteRing::new(TAIL_BYTES),
            linger_until,
        }
    }

    /// Remember output for [`Active::end`]'s explanation.
    pub(crate) fn note_output(&mut self, data: &[u8]) {
        self.tail.push(data);
    }

    async fn next_event(&mut self, pending_input: &[u8]) -> SolEvent {
        let linger = self.linger_until;
        tokio::select! {
            r = read_output(&mut self.reader) => match r {
                Ok(data) if data.is_empty() => SolEvent::Ended(None),
                Ok(data) => SolEvent::Output(data),
                Err(e) => SolEvent::Ended(Some(e)),
            },
            r = self.writer.write(pending_input), if !pending_input.is_empty() => match r {
                Ok(0) => SolEvent::Ended(Some(io::ErrorKind::WriteZero.into())),
                Ok(n) => SolEvent::Wrote(n),
                Err(e) => SolEvent::Ended(Some(e)),
            },
            _ = async { match linger {
                Some(at) => sleep_until(at).await,
                None => pending().await,
            }} => SolEvent::LingerOver,
        }
    }

    /// End the session: cleanly (`deactivate`) or after it ended by itself.
    /// In the latter case, a readable line on why, from its last output.
    pub(crate) async fn end(self, deactivate: bool, error: Option<io::Error>) -> String {
        let own = self.control.why();
        let status = self.control.end(deactivate).await;
        let mut why = own
            .unwrap_or_else(|| super::launcher::last_words(&self.tail.contents(), status, false));
        if let Some(e) = error {
            why.push_str(&format!("; {e}"));
        }
        why
    }
}

/// The next output (empty at the stream's end), read through a buffer on
/// the stack of one poll and copied out at its exact size.
async fn read_output(reader: &mut ReadHalf<Box<dyn SolIo>>) -> io::Result<Bytes> {
    poll_fn(|cx| {
        // Uninitialised: no memset of the buffer on every poll.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut buf);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(rb.filled())))
    })
    .await
}
