//! Many sessions on one UDP socket ([`SharedUdp`]): one unconnected socket,
//! one receive task that hands each datagram to the session registered for
//! its sender (the BMC's ip:port), and per-session [`Endpoint`]s that are a
//! [`Datagram`] (send = `send_to` the BMC, recv = its next datagram).
//! console-svc's `rmcp` backend uses it (`[rmcp] udp = "shared"`) so 10,000
//! consoles cost one file descriptor, not 10,000.
//!
//! - A session's queue is bounded ([`SharedConfig::queue`]); a datagram
//!   beyond it is dropped, as a full socket buffer would, and counted.
//! - A datagram from an address no endpoint is registered for is dropped
//!   and counted (the kernel filters these for a connected socket).
//! - One endpoint per BMC address: a second registration for an address in
//!   use is refused ([`SharedError::PeerInUse`]), never silently sharing or
//!   stealing datagrams; the caller picks another transport for it
//!   (console-svc falls back to a socket of its own).
//! - An endpoint unregisters when dropped. The receive task ends when the
//!   last [`SharedUdp`] handle and endpoint are gone, or on
//!   [`SharedUdp::cancel`]; endpoints then fail to receive.
//!
//! An idle endpoint costs its table entry and a small slot (no buffer, no
//! channel block); `tests/udp_modes.rs` measures it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::transport::{take, Datagram};

/// Why an endpoint could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("BMC {peer} already has a session on the shared UDP socket (one per BMC address)")]
    PeerInUse { peer: SocketAddr },
    #[error("BMC {peer} is not reachable from the shared UDP socket bound to {local}")]
    Family { peer: SocketAddr, local: SocketAddr },
    #[error("the shared UDP socket is closed")]
    Closed,
    #[error("shared UDP socket: {0}")]
    Io(#[from] io::Error),
}

/// Settings of one shared socket.
#[derive(Clone, Copy, Debug)]
pub struct SharedConfig {
    /// Datagrams kept per endpoint while its session is not reading.
    pub queue: usize,
    /// The socket's receive buffer asked of the kernel (SO_RCVBUF; Linux
    /// caps it at `net.core.rmem_max`). One socket takes what thousands of
    /// sockets' buffers would, so it asks for more than the default.
    pub recv_buffer: usize,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            // A SOL session has one packet in flight each way plus a
            // keep-alive answer: 16 leaves room for a burst of retransmissions.
            queue: 16,
            recv_buffer: 4 << 20,
        }
    }
}

/// Counters of a shared socket since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Endpoints registered now.
    pub endpoints: usize,
    /// Datagrams handed to an endpoint's queue.
    pub delivered: u64,
    /// Dropped: no endpoint for the sender's address.
    pub unknown_peer: u64,
    /// Dropped: the endpoint's queue was full.
    pub overflow: u64,
    /// Registrations refused because the address was in use.
    pub refused: u64,
}

/// A shared socket's handle: registers endpoints; cloning shares it.
#[derive(Clone)]
pub struct SharedUdp {
    owner: Arc<Owner>,
}

/// Ends the receive task when the last handle or endpoint goes.
struct Owner {
    core: Arc<Core>,
    cancel: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the receive task and the endpoints share.
struct Core {
    sock: UdpSocket,
    local: SocketAddr,
    cfg: SharedConfig,
    peers: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    closed: AtomicBool,
    /// Told each time an endpoint unregisters.
    freed: Notify,
    /// Cancelled when the receive task has ended.
    ended: CancellationToken,
    delivered: AtomicU64,
    unknown_peer: AtomicU64,
    overflow: AtomicU64,
    refused: AtomicU64,
}

/// One endpoint's queue. Empty, its `VecDeque` holds no allocation.
#[derive(Default)]
struct Slot {
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedUdp {
    /// Bind `local` (e.g. `0.0.0.0:0`) and start the receive task.
    pub async fn bind(local: SocketAddr, cfg: SharedConfig) -> Result<Self, SharedError> {
        Self::start(local, cfg)
    }

    /// [`Self::bind`] without the future (binding does not wait); needs a
    /// runtime for the receive task.
    pub(crate) fn start(local: SocketAddr, cfg: SharedConfig) -> Result<Self, SharedError> {
        let sock = bind_socket(local, cfg.recv_buffer)?;
        let local = sock.local_addr()?;
        let core = Arc::new(Core {
            sock,
            local,
            cfg: SharedConfig {
                queue: cfg.queue.max(1),
                ..cfg
            },
            peers: Mutex::default(),
            closed: AtomicBool::new(false),
            freed: Notify::new(),
            ended: CancellationToken::new(),
            delivered: AtomicU64::new(0),
            unknown_peer: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(receive(core.clone(), cancel.clone()));
        Ok(Self {
            owner: Arc::new(Owner { core, cancel }),
        })
    }

    /// A shared socket for `peer`'s address family, bound to the unspecified address.
    pub async fn bind_for(peer: SocketAddr, cfg: SharedConfig) -> Result<Self, SharedError> {
        Self::start_for(peer, cfg)
    }

    pub(crate) fn start_for(peer: SocketAddr, cfg: SharedConfig) -> Result<Self, SharedError> {
        let local: SocketAddr = if peer.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Self::start(local, cfg)
    }

    /// The receive task has ended (cancelled, or the socket failed): no
    /// endpoint can be had any more.
    pub fn is_closed(&self) -> bool {
        self.owner.core.closed.load(Ordering::SeqCst)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.owner.core.local
    }

    /// The receive buffer the kernel gave the socket (SO_RCVBUF as read back).
    pub fn recv_buffer(&self) -> io::Result<usize> {
        socket2::SockRef::from(&self.owner.core.sock).recv_buffer_size()
    }

    /// The endpoint for the BMC at `peer`; refused while another endpoint
    /// holds that address.
    pub fn endpoint(&self, peer: SocketAddr) -> Result<Endpoint, SharedError> {
        let core = &self.owner.core;
        if core.closed.load(Ordering::SeqCst) {
            return Err(SharedError::Closed);
        }
        if peer.is_ipv4() != core.local.is_ipv4() {
            return Err(SharedError::Family {
                peer,
                local: core.local,
            });
        }
        let slot = Arc::new(Slot::default());
        match lock(&core.peers).entry(peer) {
            std::collections::hash_map::Entry::Occupied(_) => {
                core.refused.fetch_add(1, Ordering::Relaxed);
                return Err(SharedError::PeerInUse { peer });
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(slot.clone());
            }
        }
        Ok(Endpoint {
            owner: self.owner.clone(),
            peer,
            slot,
        })
    }

    /// As [`Self::endpoint`], but while the address is in use, wait up to
    /// `grace` for its endpoint to go (a session being torn down as its
    /// successor starts) before refusing.
    pub async fn endpoint_within(
        &self,
        peer: SocketAddr,
        grace: std::time::Duration,
    ) -> Result<Endpoint, SharedError> {
        let freed = &self.owner.core.freed;
        let wait = async {
            loop {
                let notified = freed.notified();
                tokio::pin!(notified);
                // Registered before the check: a drop in between still wakes us.
                notified.as_mut().enable();
                match self.endpoint(peer) {
                    Err(SharedError::PeerInUse { .. }) => notified.await,
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(grace, wait).await {
            Ok(got) => got,
            Err(_) => self.endpoint(peer),
        }
    }

    pub fn stats(&self) -> SharedStats {
        let c = &self.owner.core;
        SharedStats {
            endpoints: lock(&c.peers).len(),
            delivered: c.delivered.load(Ordering::Relaxed),
            unknown_peer: c.unknown_peer.load(Ordering::Relaxed),
            overflow: c.overflow.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Stop the receive task now (endpoints then fail to receive).
    pub fn cancel(&self) {
        self.owner.cancel.cancel();
    }

    /// Wait until the receive task has ended.
    pub async fn ended(&self) {
        self.owner.core.ended.cancelled().await
    }
}

/// A non-blocking UDP socket bound to `local`, its receive buffer asked
/// to be `recv_buffer` (a refusal is logged: the default still works).
fn bind_socket(local: SocketAddr, recv_buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = sock.set_recv_buffer_size(recv_buffer) {
        warn!(error = %e, recv_buffer, "shared UDP socket: receive buffer not set");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&local.into())?;
    let got = sock.recv_buffer_size().unwrap_or(0);
    debug!(%local, asked = recv_buffer, got, "shared UDP socket bound");
    UdpSocket::from_std(sock.into())
}

/// Datagrams the receive task takes in one go before it lets others run.
pub(crate) const BATCH: usize = 64;

/// The receive task: demultiplex until cancelled or the socket fails.
async fn receive(core: Arc<Core>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            ready = core.sock.readable() => {
                if let Err(e) = ready {
                    warn!(error = %e, local = %core.local, "shared UDP socket failed");
                    break;
                }
            }
        }
        // What is there, a batch at a time: a flood must not keep the
        // other tasks of this worker from running.
        let mut drained = false;
        for _ in 0..BATCH {
            match take(|buf| core.sock.try_recv_from(buf)) {
                Ok((d, from)) => core.deliver(from, d),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                // An unconnected socket reports no ICMP errors; anything
                // else is about one datagram.
                Err(e) => debug!(error = %e, "shared UDP receive failed"),
            }
        }
        if !drained {
            tokio::task::yield_now().await;
        }
    }
    core.closed.store(true, Ordering::SeqCst);
    for slot in lock(&core.peers).values() {
        slot.ready.notify_one();
    }
    core.ended.cancel();
    debug!(local = %core.local, "shared UDP receive task ended");
}

impl Core {
    fn deliver(&self, from: SocketAddr, d: Vec<u8>) {
        let slot = lock(&self.peers).get(&from).cloned();
        let Some(slot) = slot else {
            self.unknown_peer.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "datagram from no registered BMC dropped");
            return;
        };
        {
            let mut q = lock(&slot.queue);
            if q.len() >= self.cfg.queue {
                drop(q);
                slot.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflow.fetch_add(1, Ordering::Relaxed);
                debug!(%from, "session's queue full: datagram dropped");
                return;
            }
            q.push_back(d);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        slot.ready.notify_one();
    }
}

/// One session's end of a [`SharedUdp`]: a [`Datagram`] to one BMC.
pub struct Endpoint {
    owner: Arc<Owner>,
    peer: SocketAddr,
    slot: Arc<Slot>,
}

impl Endpoint {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Datagrams dropped because this endpoint's queue was full.
    pub fn dropped(&self) -> u64 {
        self.slot.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let mut peers = lock(&self.owner.core.peers);
        // The address is ours until now (duplicates are refused); the slot
        // comparison only makes sure.
        if peers
            .get(&self.peer)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            peers.remove(&self.peer);
        }
        drop(peers);
        self.owner.core.freed.notify_waiters();
    }
}

impl Datagram for Endpoint {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        self.owner
            .core
            .sock
            .send_to(datagram, self.peer)
            .await
            .map(|_| ())
    }

    /// Cancel-safe: a datagram leaves the queue only in the poll that returns it.
    async fn recv(&self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(d) = lock(&self.slot.queue).pop_front() {
                return Ok(d);
            }
            if self.owner.core.closed.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the shared UDP socket's receive task has ended",
                ));
            }
            // notify_one keeps a permit when nobody waits: a datagram
            // queued between the check and here still wakes us.
            self.slot.ready.notified().await;
        }
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
