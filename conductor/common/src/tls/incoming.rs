//! The TLS accept loop a gRPC server serves from
//! (`serve_with_incoming_shutdown`): each accepted connection's handshake
//! runs on its own task within a time bound, so a client that connects and
//! says nothing holds neither the accept loop nor another client's
//! handshake. A refused or timed-out handshake is logged with the peer's
//! address and dropped; the server never sees it.
//!
//! ```text
//!  accept ──spawn──▶ handshake (≤ timeout) ──ok──▶ channel ──▶ tonic
//!    ▲  (at most MAX_HANDSHAKES at once)  └─fails/late─▶ info!, closed
//!    └── until the token is cancelled or the stream is dropped
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

/// How long a client may take to finish its handshake, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once; further connections wait in the kernel's
/// backlog until one finishes.
pub const MAX_HANDSHAKES: usize = 256;

/// A stream of TLS connections that completed their handshake; dropping it
/// stops the accept loop.
pub struct TlsIncoming {
    rx: mpsc::Receiver<io::Result<TlsStream<TcpStream>>>,
    _stop: DropGuard,
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Accept on `listener` and hand over each connection once its handshake
/// with `acceptor` finished within `timeout`, until `cancel` (or until the
/// stream is dropped).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    cancel: CancellationToken,
) -> TlsIncoming {
    let stop = cancel.child_token();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, acceptor, timeout, tx, stop.clone()));
    TlsIncoming {
        rx,
        _stop: stop.drop_guard(),
    }
}

type Handshake = (SocketAddr, Result<io::Result<TlsStream<TcpStream>>, ()>);

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
    stop: CancellationToken,
) {
    let mut handshakes: JoinSet<Handshake> = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => match accepted {
                Ok((tcp, peer)) => {
                    // Replies written in pieces must not wait on Nagle and
                    // the client's delayed ACK (about 40 ms).
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    handshakes.spawn(async move {
                        let done = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                        (peer, done.map_err(|_| ()))
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: the listener is
                    // fine, the moment is not.
                    warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                let Ok((peer, result)) = done else { continue };
                match result {
                    Ok(Ok(tls)) => {
                        debug!(%peer, "TLS handshake done");
                        if tx.send(Ok(tls)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake refused"),
                    Err(()) => info!(%peer, ?timeout, "TLS handshake not finished in time; closed"),
                }
            }
        }
    }
    handshakes.shutdown().await;
}
