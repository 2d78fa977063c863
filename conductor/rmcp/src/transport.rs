//! The datagram seam under a session: a connected tokio `UdpSocket` in
//! production, an in-memory pair in tests (where a fake BMC sits on the other
//! end and can drop packets). `session` and `sol` only see [`Datagram`].

use std::future::Future;
use std::io;

use tokio::sync::{mpsc, Mutex};

/// Largest datagram a session reads (SOL payloads are far smaller).
pub const MAX_DATAGRAM: usize = 1500;

/// A connected, message-oriented transport to one BMC.
pub trait Datagram: Send + Sync + 'static {
    fn send(&self, datagram: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Cancel-safe: dropping the future loses no datagram.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

impl Datagram for tokio::net::UdpSocket {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        tokio::net::UdpSocket::send(self, datagram)
            .await
            .map(|_| ())
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::net::UdpSocket::recv(self, buf).await
    }
}

/// A UDP socket bound to an ephemeral port and connected to `bmc`.
pub async fn udp(bmc: std::net::SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let local: std::net::SocketAddr = if bmc.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(bmc).await?;
    Ok(sock)
}

/// One end of an in-memory datagram pair.
pub struct MemDatagram {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
}

/// Two connected in-memory ends.
pub fn mem_pair() -> (MemDatagram, MemDatagram) {
    let (atx, arx) = mpsc::unbounded_channel();
    let (btx, brx) = mpsc::unbounded_channel();
    (
        MemDatagram {
            tx: atx,
            rx: Mutex::new(brx),
        },
        MemDatagram {
            tx: btx,
            rx: Mutex::new(arx),
        },
    )
}

impl Datagram for MemDatagram {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        // A vanished peer is a lost datagram, as with UDP.
        let _ = self.tx.send(datagram.to_vec());
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => std::future::pending().await,
        }
    }
}
