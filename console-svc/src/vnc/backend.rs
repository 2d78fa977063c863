//! [`VncBackend`]: the [`ConsoleBackend`] for VNC consoles. One listener
//! task per console; every accepted connection is a viewer task
//! ([`super::viewer`]) with its own upstream connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::accept::{Scheme, ViewerSettings};
use super::upstream::{Method, UpstreamSettings};
use super::viewer::{self, Console};
use super::{tls, VncError};
use crate::backend::{
    bind_port, BackendError, ConsoleBackend, ConsoleContext, Health, LogSnapshot, RunningConsole,
};
use crate::config::{Config, VncAuthScheme, VncUpstreamSecurity};
use crate::spec::Target;

/// What the VNC backend needs, built once from `[vnc]`.
#[derive(Clone)]
pub struct VncSettings {
    pub viewer: ViewerSettings,
    pub upstream: UpstreamSettings,
    pub exclusive: bool,
    /// Longest wait between probes of an unreachable upstream.
    pub retry_max_backoff: Duration,
}

impl VncSettings {
    /// Reads the TLS material `[vnc]` names; a missing or bad file is an
    /// error now rather than at the first viewer.
    pub fn from_config(config: &Config) -> Result<Self, VncError> {
        let v = &config.vnc;
        let schemes = v.auth_schemes.iter().map(|s| match s {
            VncAuthScheme::None => Scheme::None,
            VncAuthScheme::Vencrypt => Scheme::VeNCrypt,
        });
        let server_tls = match (&v.vencrypt_cert, &v.vencrypt_key, &v.vencrypt_ca_certs) {
            (Some(cert), Some(key), Some(ca))
                if v.auth_schemes.contains(&VncAuthScheme::Vencrypt) =>
            {
                Some(tls::server_config(cert, key, ca)?)
            }
            _ => None,
        };
        let prefer = v.upstream_security.iter().map(|m| match m {
            VncUpstreamSecurity::Vencrypt => Method::VeNCrypt,
            VncUpstreamSecurity::Vncauth => Method::VncAuth,
            VncUpstreamSecurity::None => Method::None,
        });
        let client_tls = v
            .upstream_ca_certs
            .as_deref()
            .map(tls::client_config)
            .transpose()?;
        Ok(Self {
            viewer: ViewerSettings {
                schemes: schemes.collect(),
                tls: server_tls,
                handshake_timeout: v.handshake_timeout,
                max_handshake_bytes: v.max_handshake_bytes,
            },
            upstream: UpstreamSettings {
                prefer: prefer.collect(),
                tls: client_tls,
                timeout: v.upstream_timeout,
            },
            exclusive: v.exclusive,
            retry_max_backoff: config.console.retry_max_backoff,
        })
    }
}

pub struct VncBackend {
    settings: Arc<VncSettings>,
}

impl VncBackend {
    pub fn new(config: &Config) -> Result<Self, VncError> {
        Ok(Self::with_settings(VncSettings::from_config(config)?))
    }

    pub fn with_settings(settings: VncSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
}

#[async_trait]
impl ConsoleBackend for VncBackend {
    fn name(&self) -> &'static str {
        "vnc"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        let Target::Vnc(target) = &ctx.target else {
            return Err(BackendError::WrongKind {
                backend: self.name(),
                kind: ctx.target.kind(),
            });
        };
        let span = tracing::info_span!(parent: None, "console", node = %ctx.node, port = ctx.listen.port(), upstream = %target.display_addr());
        let listener = bind_port(ctx.listen).await?;
        span.in_scope(|| info!(listen = %ctx.listen, "VNC console listening"));
        let console = Arc::new(Console {
            target: target.clone(),
            settings: self.settings.clone(),
            health: ctx.health,
            exclusive: Arc::new(Semaphore::new(1)),
            fence: Some(ctx.fence),
        });
        let stop = ctx.cancel.child_token();
        let probe =
            tokio::spawn(viewer::probe(console.clone(), stop.clone()).instrument(span.clone()));
        let acceptor = tokio::spawn(accept_loop(listener, console, stop.clone()).instrument(span));
        Ok(Box::new(VncConsole {
            acceptor,
            probe,
            stop,
        }))
    }
}

async fn accept_loop(listener: TcpListener, console: Arc<Console>, stop: CancellationToken) {
    let mut viewers = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = viewers.join_next(), if !viewers.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let span = tracing::info_span!("viewer", %peer);
                let task = viewer::serve(stream, console.clone(), stop.clone());
                viewers.spawn(task.instrument(span));
            }
            Err(e) => {
                warn!(error = %e, "cannot accept a viewer");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    // Viewers watch `stop` too; give them a moment to close cleanly.
    let drain = async { while viewers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        viewers.shutdown().await;
    }
}

/// A console served by the VNC backend.
struct VncConsole {
    acceptor: JoinHandle<()>,
    /// Probes an unreachable upstream until it answers.
    probe: JoinHandle<()>,
    stop: CancellationToken,
}

#[async_trait]
impl RunningConsole for VncConsole {
    async fn stop(mut self: Box<Self>) {
        self.stop.cancel();
        let _ = (&mut self.acceptor).await;
        let _ = (&mut self.probe).await;
    }

    fn log(&self, _max_bytes: usize) -> Option<LogSnapshot> {
        None
    }
}

impl Drop for VncConsole {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Publish `health` unless it is already that (no needless wakeups).
pub(crate) fn publish(tx: &watch::Sender<Health>, health: Health) {
    tx.send_if_modified(|h| {
        let changed = *h != health;
        *h = health;
        changed
    });
}
