//! One viewer connection: its handshake, its own upstream connection, then
//! the relay. Also the probe that checks the upstream when a console starts.
//!
//! Only upstream trouble changes the console's health; a misbehaving viewer
//! is logged and closed, nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::accept::{self, Pending};
use super::backend::{publish, VncSettings};
use super::rfb::Version;
use super::stream::Stream;
use super::upstream::{self, UpstreamTarget};
use super::VncError;
use crate::backend::Health;
use crate::backoff::Backoff;
use crate::coordinator::Fence;
use crate::spec::VncTarget;

/// Relay buffer per direction: framebuffer updates are large.
const RELAY_BUFFER: usize = 64 * 1024;

/// What every viewer of one console shares.
pub(crate) struct Console {
    pub target: VncTarget,
    pub settings: Arc<VncSettings>,
    pub health: watch::Sender<Health>,
    /// One permit: held by the viewer when `exclusive`.
    pub exclusive: Arc<Semaphore>,
    /// Checked before every upstream connection; None in unit tests.
    pub fence: Option<Fence>,
}

impl Console {
    /// Connect and authenticate upstream; publishes the outcome as health.
    pub(crate) async fn upstream(&self) -> Result<(Stream<TcpStream>, Version), VncError> {
        let result = self.connect_upstream().await;
        match &result {
            Ok((_, version)) => {
                if *self.health.borrow() != Health::Ok {
                    info!(%version, "VNC server reachable");
                }
                publish(&self.health, Health::Ok);
            }
            Err(e) => {
                let why = format!("VNC server {}: {e}", self.target.display_addr());
                warn!(error = %why, "upstream handshake failed");
                publish(&self.health, Health::Failed(why));
            }
        }
        result
    }

    async fn connect_upstream(&self) -> Result<(Stream<TcpStream>, Version), VncError> {
        if let Some(fence) = &self.fence {
            fence.check().await.map_err(VncError::Fenced)?;
        }
        let limit = self.settings.upstream.timeout;
        let target = UpstreamTarget {
            host: &self.target.host,
            password: self.target.password.as_ref(),
        };
        let attempt = async {
            let addr = (self.target.host.as_str(), self.target.port);
            let io = TcpStream::connect(addr)
                .await
                .map_err(VncError::UpstreamConnect)?;
            let _ = io.set_nodelay(true);
            upstream::handshake(io, &target, &self.settings.upstream).await
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| VncError::UpstreamTimeout(limit))?
    }
}

/// Checks the upstream when the console starts, so a wrong password shows
/// as last_error before anyone connects. An unreachable upstream is probed
/// again with backoff until it answers; an authentication failure is not
/// (VNC servers lock out an address after a few of those).
pub(crate) async fn probe(console: Arc<Console>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_secs(1), console.settings.retry_max_backoff);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = console.upstream() => r,
        };
        match result {
            Err(e) if e.is_transient() => {}
            _ => return,
        }
        let wait = backoff.next_delay();
        info!(retry_in = ?wait, "probing the VNC server again later");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Serve one viewer until either side closes or `stop`.
pub(crate) async fn serve<S>(io: S, console: Arc<Console>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    info!("viewer connected");
    let _counted = crate::metrics::get().viewer("vnc");
    let outcome = tokio::select! {
        _ = stop.cancelled() => Ok("console stopped"),
        r = session(io, &console) => r,
    };
    match outcome {
        Ok(why) => info!(%why, "viewer left"),
        Err(e) => info!(error = %e, "viewer closed"),
    }
}

async fn session<S>(io: S, console: &Console) -> Result<&'static str, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let pending = accept::accept(io, &console.settings.viewer).await?;
    let _permit = match console.settings.exclusive {
        false => None,
        true => match console.exclusive.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return reject(pending, VncError::Busy).await,
        },
    };
    let (up, version) = match console.upstream().await {
        Ok(ok) => ok,
        Err(e) => return reject(pending, e).await,
    };
    let scheme = pending.scheme;
    let upstream_tls = matches!(up, Stream::Tls(_));
    let client = pending.succeed().await?;
    info!(?scheme, upstream_version = %version, upstream_tls, "handshakes done, relaying");
    relay(client, up).await
}

async fn reject<S>(pending: Pending<S>, e: VncError) -> Result<&'static str, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match &e {
        VncError::Busy => e.to_string(),
        e => format!("console-svc cannot reach the console's VNC server: {e}"),
    };
    pending.reject(&reason).await;
    Err(e)
}

/// Bytes both ways, untouched, until one side closes.
pub(crate) async fn relay<A, B>(client: A, mut upstream: B) -> Result<&'static str, VncError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = crate::metrics::Counted::new(client, "vnc");
    let (up, down) = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await?;
    info!(
        viewer_to_upstream = up,
        upstream_to_viewer = down,
        "relay ended"
    );
    Ok("connection closed")
}
