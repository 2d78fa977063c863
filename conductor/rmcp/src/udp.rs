//! UDP for sessions, chosen at run time ([`UdpMode`]): a connected socket
//! per session, or endpoints of [`SharedUdp`] sockets (one per address
//! family, bound on first use). [`UdpPool::open`] gives a [`Udp`], which is
//! a [`Datagram`] either way. console-svc's `rmcp` backend holds one pool
//! (`[rmcp] udp`); the rig tests run with either.
//!
//! A second session to a BMC address that already has one on the shared
//! socket is refused by [`SharedUdp`]. The pool first waits a moment for
//! the address to be given up (a reconnect while the old session's task is
//! still being dropped), then gives the session a socket of its own
//! (counted in [`UdpPool::fallbacks`]; two consoles naming the same BMC),
//! so neither steals the other's datagrams.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::shared::{Endpoint, SharedConfig, SharedError, SharedStats, SharedUdp};
use crate::transport::{self, Datagram};

/// How long a session waits for its BMC's address on the shared socket to
/// be given up by a session being torn down (its task aborted a moment
/// ago) before it takes a socket of its own for its whole life.
const SUCCESSOR_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How sessions get their UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpMode {
    /// A connected socket per session (a file descriptor each).
    PerSession,
    /// Sessions share one unconnected socket per address family.
    Shared,
}

/// One session's UDP transport.
pub enum Udp {
    Own(UdpSocket),
    Shared(Endpoint),
}

impl Datagram for Udp {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Udp::Own(s) => Datagram::send(s, datagram).await,
            Udp::Shared(e) => e.send(datagram).await,
        }
    }

    async fn recv(&self) -> io::Result<Vec<u8>> {
        match self {
            Udp::Own(s) => Datagram::recv(s).await,
            Udp::Shared(e) => e.recv().await,
        }
    }
}

/// Where sessions' transports come from.
pub struct UdpPool {
    mode: UdpMode,
    cfg: SharedConfig,
    /// The shared socket of each family, bound on first use (and again if
    /// its receive task ever ended).
    v4: Mutex<Option<SharedUdp>>,
    v6: Mutex<Option<SharedUdp>>,
    fallbacks: AtomicU64,
}

impl UdpPool {
    pub fn new(mode: UdpMode) -> Self {
        Self::with_config(mode, SharedConfig::default())
    }

    pub fn with_config(mode: UdpMode, cfg: SharedConfig) -> Self {
        Self {
            mode,
            cfg,
            v4: Mutex::default(),
            v6: Mutex::default(),
            fallbacks: AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> UdpMode {
        self.mode
    }

    /// A transport to `bmc`.
    pub async fn open(&self, bmc: SocketAddr) -> io::Result<Udp> {
        if self.mode == UdpMode::PerSession {
            return Ok(Udp::Own(transport::udp(bmc).await?));
        }
        let shared = self.shared_for(bmc)?;
        match shared.endpoint_within(bmc, SUCCESSOR_GRACE).await {
            Ok(e) => Ok(Udp::Shared(e)),
            Err(SharedError::PeerInUse { .. }) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                debug!(%bmc, "BMC already has a session on the shared socket: this one gets its own");
                Ok(Udp::Own(transport::udp(bmc).await?))
            }
            Err(e) => Err(into_io(e)),
        }
    }

    /// The shared socket for `bmc`'s family: the one there is, unless its
    /// receive task has ended (then a new one).
    fn shared_for(&self, bmc: SocketAddr) -> io::Result<SharedUdp> {
        let cell = if bmc.is_ipv4() { &self.v4 } else { &self.v6 };
        let mut slot = cell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        if slot.is_some() {
            warn!("the shared UDP socket's receive task ended: binding a new one");
        }
        let s = SharedUdp::start_for(bmc, self.cfg).map_err(into_io)?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Sessions given their own socket because their BMC's address was in use.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The shared sockets' counters (IPv4, IPv6), for those bound.
    pub fn stats(&self) -> (Option<SharedStats>, Option<SharedStats>) {
        let stats = |m: &Mutex<Option<SharedUdp>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(SharedUdp::stats)
        };
        (stats(&self.v4), stats(&self.v6))
    }
}

fn into_io(e: SharedError) -> io::Error {
    match e {
        SharedError::Io(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_mode_shares_a_socket_and_a_duplicate_gets_its_own() {
        let pool = UdpPool::new(UdpMode::Shared);
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let ta = pool.open(a_addr).await.unwrap();
        let tb = pool.open(b_addr).await.unwrap();
        let dup = pool.open(a_addr).await.unwrap();
        assert!(matches!((&ta, &tb), (Udp::Shared(_), Udp::Shared(_))));
        assert!(
            matches!(dup, Udp::Own(_)),
            "the duplicate has its own socket"
        );
        assert_eq!(pool.fallbacks(), 1);
        let mut buf = [0u8; 16];
        ta.send(b"1").await.unwrap();
        let (_, from_ta) = a.recv_from(&mut buf).await.unwrap();
        tb.send(b"2").await.unwrap();
        let (_, from_tb) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(from_ta, from_tb, "one local socket for both");
        dup.send(b"3").await.unwrap();
        let (_, from_dup) = a.recv_from(&mut buf).await.unwrap();
        assert_ne!(from_dup, from_ta);
        // Each answer reaches the session it was sent to.
        a.send_to(b"to dup", from_dup).await.unwrap();
        a.send_to(b"to ta", from_ta).await.unwrap();
        assert_eq!(dup.recv().await.unwrap(), b"to dup");
        assert_eq!(ta.recv().await.unwrap(), b"to ta");
        assert_eq!(pool.stats().0.unwrap().endpoints, 2);
    }

    /// A reconnect while the old session is still being dropped stays on
    /// the shared socket (it does not take a socket of its own for life).
    #[tokio::test]
    async fn a_successor_waits_for_its_predecessor_to_go() {
        let pool = UdpPool::new(UdpMode::Shared);
        let bmc = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let old = pool.open(bmc.local_addr().unwrap()).await.unwrap();
        let teardown = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(old);
        });
        let new = pool.open(bmc.local_addr().unwrap()).await.unwrap();
        teardown.await.unwrap();
        assert!(matches!(new, Udp::Shared(_)));
        assert_eq!(pool.fallbacks(), 0);
    }

    /// IPv4 and IPv6 BMCs each get the shared socket of their family.
    #[tokio::test]
    async fn each_address_family_has_its_shared_socket() {
        let Ok(v6) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("notice: no IPv6 loopback here; skipping");
            return;
        };
        let v4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pool = UdpPool::new(UdpMode::Shared);
        let t6 = pool.open(v6.local_addr().unwrap()).await.unwrap();
        let t4 = pool.open(v4.local_addr().unwrap()).await.unwrap();
        t6.send(b"six").await.unwrap();
        t4.send(b"four").await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from6) = v6.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"six");
        let (n, from4) = v4.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"four");
        v6.send_to(b"back6", from6).await.unwrap();
        v4.send_to(b"back4", from4).await.unwrap();
        assert_eq!(t6.recv().await.unwrap(), b"back6");
        assert_eq!(t4.recv().await.unwrap(), b"back4");
        let (s4, s6) = pool.stats();
        assert_eq!((s4.unwrap().endpoints, s6.unwrap().endpoints), (1, 1));
    }

    /// A shared socket whose receive task ended is replaced for the next
    /// session (a console reconnecting must not fail for ever).
    #[tokio::test]
    async fn a_closed_shared_socket_is_replaced() {
        let pool = UdpPool::new(UdpMode::Shared);
        let bmc = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t1 = pool.open(bmc.local_addr().unwrap()).await.unwrap();
        let old = pool.v4.lock().unwrap().clone().unwrap();
        old.cancel();
        old.ended().await;
        assert!(t1.recv().await.is_err(), "the old session's socket is gone");
        drop(t1);
        let t2 = pool.open(bmc.local_addr().unwrap()).await.unwrap();
        assert!(matches!(t2, Udp::Shared(_)));
        t2.send(b"again").await.unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = bmc.recv_from(&mut buf).await.unwrap();
        assert_ne!(from.port(), old.local_addr().port(), "a new socket");
        bmc.send_to(b"back", from).await.unwrap();
        assert_eq!(t2.recv().await.unwrap(), b"back");
    }

    #[tokio::test]
    async fn per_session_mode_gives_each_its_own_socket() {
        let pool = UdpPool::new(UdpMode::PerSession);
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t1 = pool.open(a.local_addr().unwrap()).await.unwrap();
        let t2 = pool.open(a.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 16];
        t1.send(b"1").await.unwrap();
        let (_, f1) = a.recv_from(&mut buf).await.unwrap();
        t2.send(b"2").await.unwrap();
        let (_, f2) = a.recv_from(&mut buf).await.unwrap();
        assert_ne!(f1, f2);
        assert!(matches!(t1, Udp::Own(_)));
        assert_eq!(pool.stats(), (None, None));
        a.send_to(b"back", f2).await.unwrap();
        assert_eq!(t2.recv().await.unwrap(), b"back");
    }
}
