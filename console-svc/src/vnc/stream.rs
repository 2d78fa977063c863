//! Byte streams of a VNC connection: [`Limited`] caps what a viewer may
//! send before its handshake completes; [`Stream`] is a connection that is
//! either still plain or runs inside TLS (VeNCrypt), on either side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that fails reads once more than `limit` bytes came in, until
/// [`Limited::lift`] is called (the handshake is over).
pub struct Limited<S> {
    inner: S,
    remaining: Option<usize>,
    limit: usize,
}

impl<S> Limited<S> {
    pub fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            remaining: Some(limit),
            limit,
        }
    }

    /// No limit from now on.
    pub fn lift(&mut self) {
        self.remaining = None;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    #[expect(
        unsafe_code,
        reason = "ReadBuf::assume_init of what a read into a limited view of the buffer filled"
    )]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(remaining) = this.remaining else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if remaining == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the viewer sent more than {} bytes during the handshake",
                    this.limit
                ),
            )));
        }
        // Read at most `remaining`, so the count is exact.
        let mut limited = buf.take(remaining);
        let poll = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        // SAFETY: `limited` wrote (and so initialized) these n bytes of buf.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        this.remaining = Some(remaining - n);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection, plain or inside TLS (server side toward viewers, client
/// side toward upstreams).
pub enum Stream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::TlsStream<S>>),
}

impl<S> Stream<S> {
    /// The transport under TLS, if any.
    pub fn transport_mut(&mut self) -> &mut S {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.get_mut().0,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls(t) => {
                let $s = Pin::new(t.as_mut());
                $e
            }
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn limited_counts_exactly_and_lifts() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut l = Limited::new(b, 4);
        a.write_all(b"abcdef").await.unwrap();
        let mut buf = [0; 3];
        l.read_exact(&mut buf).await.unwrap();
        let mut more = [0; 3];
        let err = l.read_exact(&mut more).await.unwrap_err();
        assert!(err.to_string().contains("more than 4 bytes"), "{err}");
        l.lift();
        let mut rest = [0; 2];
        l.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"ef");
    }
}
