//! The datagram seam under a session: a connected tokio `UdpSocket` (one
//! per session), a [`crate::shared`] endpoint (many sessions on one socket),
//! or an in-memory pair in tests (where a fake BMC sits on the other end and
//! can drop packets). `session` and `sol` only see [`Datagram`].
//!
//! Receiving holds no buffer while it waits: a datagram is read into a
//! transient stack buffer once the socket is readable and copied out at its
//! exact size, so an idle session (10,000 per replica) costs no 1500 bytes.

use std::future::Future;
use std::io;

use tokio::sync::{mpsc, Mutex};

/// Largest datagram a session reads (SOL payloads are far smaller).
pub const MAX_DATAGRAM: usize = 1500;

/// A connected, message-oriented transport to one BMC.
pub trait Datagram: Send + Sync + 'static {
    fn send(&self, datagram: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// The next datagram, at its exact size (at most [`MAX_DATAGRAM`]
    /// bytes). The future holds no receive buffer while it waits, and is
    /// cancel-safe: dropping it loses no datagram.
    fn recv(&self) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
}

impl Datagram for tokio::net::UdpSocket {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        tokio::net::UdpSocket::send(self, datagram)
            .await
            .map(|_| ())
    }
    async fn recv(&self) -> io::Result<Vec<u8>> {
        loop {
            self.readable().await?;
            match take(|buf| self.try_recv(buf).map(|n| (n, ()))) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                got => return got.map(|(d, ())| d),
            }
        }
    }
}

/// One non-blocking read into a stack buffer that lives only for this call
/// (never in a waiting future), copied out at the datagram's size.
pub(crate) fn take<P>(
    read: impl FnOnce(&mut [u8]) -> io::Result<(usize, P)>,
) -> io::Result<(Vec<u8>, P)> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let (n, peer) = read(&mut buf)?;
    Ok((buf[..n].to_vec(), peer))
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
    async fn recv(&self) -> io::Result<Vec<u8>> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(mut d) => {
                d.truncate(MAX_DATAGRAM);
                Ok(d)
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected UDP socket's recv: exact sizes, no buffer in the waiting
    /// future, and a dropped waiting future loses nothing.
    #[tokio::test]
    async fn udp_recv_holds_no_buffer_and_is_cancel_safe() {
        let bmc = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sock = udp(bmc.local_addr().unwrap()).await.unwrap();
        let waiting = Datagram::recv(&sock);
        let size = std::mem::size_of_val(&waiting);
        assert!(size < 256, "the waiting recv is {size} bytes");
        drop(waiting);
        {
            let mut fut = std::pin::pin!(Datagram::recv(&sock));
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(fut.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(polled, "nothing there yet");
            bmc.send_to(&[7; 1200], sock.local_addr().unwrap())
                .await
                .unwrap();
            sock.readable().await.unwrap();
            // Dropped without being polled again.
        }
        assert_eq!(Datagram::recv(&sock).await.unwrap(), vec![7; 1200]);
        bmc.send_to(b"", sock.local_addr().unwrap()).await.unwrap();
        assert_eq!(
            Datagram::recv(&sock).await.unwrap(),
            Vec::<u8>::new(),
            "an empty datagram is one too"
        );
    }

    #[tokio::test]
    async fn in_memory_recv_hands_the_datagram_over() {
        let (a, b) = mem_pair();
        a.send(b"one").await.unwrap();
        assert_eq!(b.recv().await.unwrap(), b"one");
        let size = std::mem::size_of_val(&b.recv());
        assert!(size < 256, "the waiting recv is {size} bytes");
    }
}
