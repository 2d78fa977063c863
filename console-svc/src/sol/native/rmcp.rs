//! The `rmcp` serial backend: the native backend's hub (viewers, scrollback,
//! log ring and file, backoff, fencing) with SOL spoken by console-svc itself
//! over RMCP+ ([`porthole_rmcp`]) instead of an `ipmitool` process per
//! session. By default the session is always on (`[native] always_on`): it
//! comes up with the console, stays up with no viewer, and is brought back
//! with backoff when the BMC drops it, so the log holds everything.
//!
//! [`RmcpBackend::start`] is called by the manager per console. The hub
//! checks the fence before each activation (as for `native`); every
//! datagram to the BMC goes through [`FencedUdp`] (over the console's own
//! socket or the shared one, `[rmcp] udp`), which refuses to send
//! unless the lease is known valid at that instant, and [`serve`] wakes at
//! the lease's deadline so a session whose lease lapsed ends then, without
//! a word to the BMC (no polling: an idle console costs no wake-ups).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use porthole_rmcp::udp::{Udp, UdpMode, UdpPool};
use porthole_rmcp::{transport, Privilege, Session, SessionConfig, Sol, SolConfig};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::hub::{self, HubHandle};
use super::launcher::{SessionControl, SolLauncher, SolSession};
use super::rmcp_probe::RmcpProbe;
use super::{accept_loop, NativeBackend};
use crate::backend::{
    bind_port, BackendError, BmcProbe, ConsoleBackend, ConsoleContext, LogSnapshot, RunningConsole,
};
use crate::config::{Config, RmcpUdp};
use crate::coordinator::Fence;
use crate::sol::SolError;
use crate::spec::{IpmiTarget, PrivilegeLevel};

/// A UDP transport to one BMC (its own socket or an endpoint of the shared
/// one, as `[rmcp] udp` says) that sends only while the claim's lease is
/// known valid (the HA rule: a BMC action only under a valid lease).
pub(crate) struct FencedUdp {
    udp: Udp,
    fence: Fence,
}

impl FencedUdp {
    pub(crate) async fn open(
        pool: &UdpPool,
        bmc: std::net::SocketAddr,
        fence: Fence,
    ) -> std::io::Result<Self> {
        Ok(Self {
            udp: pool.open(bmc).await?,
            fence,
        })
    }

    /// Over a connected socket of its own, whatever `[rmcp] udp` says
    /// (the BMC probe: short, and beside the console's SOL session).
    pub(crate) async fn own(bmc: std::net::SocketAddr, fence: Fence) -> std::io::Result<Self> {
        Ok(Self {
            udp: Udp::Own(transport::udp(bmc).await?),
            fence,
        })
    }
}

impl transport::Datagram for FencedUdp {
    async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.fence.permit() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("not sent to the BMC: {e}"),
            ));
        }
        transport::Datagram::send(&self.udp, datagram).await
    }

    async fn recv(&self) -> std::io::Result<Vec<u8>> {
        transport::Datagram::recv(&self.udp).await
    }
}

impl crate::metrics::RmcpUdpSource for UdpPool {
    fn rmcp_udp(&self) -> crate::metrics::RmcpUdpCounts {
        let (v4, v6) = self.stats();
        let mut c = crate::metrics::RmcpUdpCounts {
            own_socket: self.fallbacks(),
            ..Default::default()
        };
        for st in [v4, v6].into_iter().flatten() {
            c.shared_sessions += st.endpoints as u64;
            c.unknown_peer += st.unknown_peer;
            c.queue_full += st.overflow;
        }
        c
    }
}

/// The UDP transports of `[rmcp] udp`.
pub(crate) fn udp_pool(mode: RmcpUdp) -> UdpPool {
    UdpPool::new(match mode {
        RmcpUdp::Shared => UdpMode::Shared,
        RmcpUdp::PerConsole => UdpMode::PerSession,
    })
}

pub struct RmcpBackend {
    native: NativeBackend,
    /// Every console's UDP (one shared socket per address family, or a
    /// socket each); a shared socket lives as long as its last console.
    udp: Arc<UdpPool>,
}

impl RmcpBackend {
    pub fn new(config: &Config) -> Self {
        info!(udp = config.rmcp.udp.as_str(), "rmcp backend");
        let udp = Arc::new(udp_pool(config.rmcp.udp));
        crate::metrics::get().add_rmcp_udp(Arc::downgrade(&udp) as _);
        Self {
            native: NativeBackend::new(config),
            udp,
        }
    }
}

#[async_trait]
impl ConsoleBackend for RmcpBackend {
    fn name(&self) -> &'static str {
        "rmcp"
    }

    fn bmc_probe(&self, target: &IpmiTarget, fence: &Fence) -> Option<Box<dyn BmcProbe>> {
        Some(Box::new(RmcpProbe {
            target: target.clone(),
            fence: fence.clone(),
            timeout: self.native.settings.subprocess_timeout,
        }))
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        let span = tracing::info_span!(parent: None, "console", node = %ctx.node, port = ctx.listen.port());
        let target = ctx.ipmi(self.name())?.clone();
        let listener = bind_port(ctx.listen).await?;
        let settings = &self.native.settings;
        let mut cfg = self.native.hub_config(&ctx.node)?;
        cfg.always_on = settings.native.always_on.unwrap_or(true);
        cfg.backend = "rmcp";
        span.in_scope(
            || info!(listen = %ctx.listen, always_on = cfg.always_on, "console listening (rmcp)"),
        );
        let launcher = RmcpLauncher {
            target,
            udp: self.udp.clone(),
            fence: ctx.fence.clone(),
            timeout: settings.subprocess_timeout,
        };
        let stop = ctx.cancel.child_token();
        let hub = hub::spawn(
            cfg,
            Arc::new(launcher),
            ctx.fence,
            ctx.health,
            stop.clone(),
            span.clone(),
        );
        let acceptor =
            tokio::spawn(accept_loop(listener, hub.joins(), stop.clone()).instrument(span));
        Ok(Box::new(RmcpConsole {
            hub: Some(hub),
            acceptor,
            stop,
            // Deactivate + Close Session, each with the client's retries.
            stop_bound: settings.subprocess_timeout + Duration::from_secs(9),
        }))
    }
}

struct RmcpConsole {
    hub: Option<HubHandle>,
    acceptor: JoinHandle<()>,
    stop: CancellationToken,
    stop_bound: Duration,
}

#[async_trait]
impl RunningConsole for RmcpConsole {
    async fn stop(mut self: Box<Self>) {
        self.stop.cancel();
        let _ = (&mut self.acceptor).await;
        if let Some(hub) = self.hub.take() {
            hub.shutdown(self.stop_bound).await;
        }
    }

    fn log(&self, max_bytes: usize) -> Option<LogSnapshot> {
        self.hub.as_ref().map(|h| h.log(max_bytes))
    }
}

impl Drop for RmcpConsole {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct RmcpLauncher {
    target: IpmiTarget,
    udp: Arc<UdpPool>,
    fence: Fence,
    timeout: Duration,
}

fn privilege(p: PrivilegeLevel) -> Privilege {
    match p {
        PrivilegeLevel::Callback => Privilege::Callback,
        PrivilegeLevel::User => Privilege::User,
        PrivilegeLevel::Operator => Privilege::Operator,
        PrivilegeLevel::Administrator => Privilege::Administrator,
    }
}

/// The BMC's first address.
/// An IP literal (as BMC addresses mostly are) is taken as it is: only a
/// name goes to the resolver, which runs on a blocking thread (threads that
/// thousands of consoles coming up at once would each start).
pub(crate) async fn resolve(t: &IpmiTarget) -> porthole_rmcp::Result<std::net::SocketAddr> {
    let literal = t.address.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return Ok((ip, t.port).into());
    }
    tokio::net::lookup_host((t.address.as_str(), t.port))
        .await?
        .next()
        .ok_or_else(|| {
            porthole_rmcp::RmcpError::Invalid(format!("{} resolves to no address", t.address))
        })
}

/// How to log in to `t` (ipmitool's -U, -P, -C, -L).
pub(crate) fn session_config(t: &IpmiTarget) -> SessionConfig {
    let mut cfg = SessionConfig::new(&t.username, t.password.expose().as_bytes());
    cfg.cipher_suite = t.cipher_suite;
    cfg.privilege = privilege(t.privilege);
    cfg
}

impl RmcpLauncher {
    async fn open(&self) -> porthole_rmcp::Result<Sol<FencedUdp>> {
        let t = &self.target;
        let addr = resolve(t).await?;
        let udp = FencedUdp::open(&self.udp, addr, self.fence.clone()).await?;
        let session = Session::open(udp, &session_config(t)).await?;
        let sol = SolConfig {
            session_port: Some(t.port),
            ..SolConfig::default()
        };
        Sol::activate(session, sol).await
    }
}

#[async_trait]
impl SolLauncher for RmcpLauncher {
    /// Nothing to do up front: [`Sol::activate`] takes over a payload that
    /// is active elsewhere (deactivate, activate) within its own session.
    async fn deactivate(&self) -> Result<(), SolError> {
        Ok(())
    }

    async fn activate(&self) -> Result<SolSession, SolError> {
        let bmc = self.target.display_addr();
        let sol = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| SolError::Timeout {
                what: format!("RMCP+ SOL activation on {bmc}"),
                timeout: self.timeout,
            })?
            .map_err(|e| SolError::Bmc {
                bmc: bmc.clone(),
                message: e.to_string(),
            })?;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let cancel = CancellationToken::new();
        let why = Arc::new(Mutex::new(None));
        let task = tokio::spawn(serve(
            sol,
            theirs,
            cancel.clone(),
            self.fence.clone(),
            why.clone(),
            bmc,
        ));
        Ok(SolSession {
            io: Box::new(ours),
            greeting: Bytes::new(),
            early_output: Bytes::new(),
            control: Box::new(RmcpControl {
                cancel,
                task,
                why,
                stop_timeout: self.timeout,
            }),
        })
    }
}

/// Run the SOL session on the hub's stream until it ends or the lease is no
/// longer known valid, then say why and close the stream (the hub reads
/// what is left, then the end). One task per session: keystrokes and output
/// go through `io` itself, no queues in between.
async fn serve<T: transport::Datagram>(
    sol: Sol<T>,
    mut io: DuplexStream,
    cancel: CancellationToken,
    fence: Fence,
    why: Arc<Mutex<Option<String>>>,
    bmc: String,
) {
    let ended = tokio::select! {
        r = sol.run(&mut io, cancel) => match r {
            Ok(()) => "SOL session closed".to_owned(),
            Err(e) => format!("BMC {bmc}: {e}"),
        },
        // Dropping the session here ends it without a word to the BMC.
        e = lease_lapse(&fence) => {
            warn!(reason = %e, "lease not known valid: SOL session dropped without telling the BMC");
            format!("lease not known valid: {e}")
        }
    };
    *why.lock().unwrap_or_else(|e| e.into_inner()) = Some(ended);
    let _ = io.shutdown().await;
}

/// Sleep until the lease's current deadline and look again (a renewed lease
/// gives a later one) until it is no longer known valid: no polling, so an
/// idle console costs no wake-ups.
async fn lease_lapse(fence: &Fence) -> crate::coordinator::CoordError {
    loop {
        match fence.permit() {
            Ok(permit) => match permit.until() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            },
            Err(e) => return e,
        }
    }
}

struct RmcpControl {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    why: Arc<Mutex<Option<String>>>,
    stop_timeout: Duration,
}

#[async_trait]
impl SessionControl for RmcpControl {
    async fn end(mut self: Box<Self>, deactivate: bool) -> Option<std::process::ExitStatus> {
        if deactivate {
            // Sol::run deactivates the payload and closes the session.
            self.cancel.cancel();
            let _ = tokio::time::timeout(self.stop_timeout, &mut self.task).await;
        }
        self.task.abort();
        None
    }

    fn why(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
#[path = "rmcp_tests.rs"]
mod tests;
