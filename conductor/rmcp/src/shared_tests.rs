//! [`SharedUdp`] on real loopback UDP: datagrams reach the endpoint of
//! their sender, unknown senders and queue overflow are dropped and
//! counted, endpoints unregister on drop, a second endpoint for an address
//! is refused, the receive task ends on cancel and with its last user, and
//! whole RMCP+ sessions (with SOL) run side by side on one socket against
//! the test BMC served on UDP.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::test_bmc::{self, Control};
use crate::{Session, SessionConfig, Sol, SolConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

async fn shared(queue: usize) -> SharedUdp {
    let cfg = SharedConfig {
        queue,
        ..SharedConfig::default()
    };
    SharedUdp::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

async fn bmc_sock() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

async fn recv(e: &Endpoint) -> Vec<u8> {
    tokio::time::timeout(WAIT, e.recv())
        .await
        .expect("a datagram within 5 s")
        .unwrap()
}

/// Wait until the socket's counters satisfy `done` (the receive task runs
/// on its own; real time, bounded).
async fn until(s: &SharedUdp, done: impl Fn(&SharedStats) -> bool) -> SharedStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = s.stats();
        if done(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats stuck at {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn datagrams_reach_the_endpoint_of_their_sender() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let (b, b_addr) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    let eb = s.endpoint(b_addr).unwrap();
    assert_eq!(s.stats().endpoints, 2);

    ea.send(b"to a").await.unwrap();
    eb.send(b"to b").await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = a.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"to a"[..], s.local_addr()));
    let (n, from) = b.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"to b"[..], s.local_addr()));

    // Interleaved: each endpoint sees its own, in order.
    b.send_to(b"b1", s.local_addr()).await.unwrap();
    a.send_to(b"a1", s.local_addr()).await.unwrap();
    b.send_to(b"b2", s.local_addr()).await.unwrap();
    a.send_to(b"a2", s.local_addr()).await.unwrap();
    assert_eq!(recv(&ea).await, b"a1");
    assert_eq!(recv(&ea).await, b"a2");
    assert_eq!(recv(&eb).await, b"b1");
    assert_eq!(recv(&eb).await, b"b2");
    assert_eq!(s.stats().delivered, 4);
}

#[tokio::test]
async fn a_datagram_from_an_unknown_peer_is_dropped_and_counted() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let (stranger, _) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    stranger.send_to(b"forged", s.local_addr()).await.unwrap();
    until(&s, |st| st.unknown_peer == 1).await;
    a.send_to(b"real", s.local_addr()).await.unwrap();
    assert_eq!(
        recv(&ea).await,
        b"real",
        "the stranger's datagram is not ours"
    );
    let st = s.stats();
    assert_eq!((st.unknown_peer, st.delivered), (1, 1));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let s = shared(2).await;
    let (a, a_addr) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    for i in 0..5u8 {
        a.send_to(&[i], s.local_addr()).await.unwrap();
    }
    let st = until(&s, |st| st.delivered + st.overflow == 5).await;
    assert_eq!((st.delivered, st.overflow), (2, 3));
    assert_eq!(ea.dropped(), 3);
    assert_eq!(recv(&ea).await, [0]);
    assert_eq!(recv(&ea).await, [1]);
    // Room again: the next one is kept.
    a.send_to(&[9], s.local_addr()).await.unwrap();
    assert_eq!(recv(&ea).await, [9]);
}

#[tokio::test]
async fn a_dropped_endpoint_unregisters() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    drop(ea);
    assert_eq!(s.stats().endpoints, 0);
    a.send_to(b"late", s.local_addr()).await.unwrap();
    until(&s, |st| st.unknown_peer == 1).await;
    // The address is free again, and the new endpoint gets only new datagrams.
    let again = s.endpoint(a_addr).unwrap();
    a.send_to(b"new", s.local_addr()).await.unwrap();
    assert_eq!(recv(&again).await, b"new");
}

#[tokio::test]
async fn a_second_endpoint_for_the_same_bmc_is_refused() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let first = s.endpoint(a_addr).unwrap();
    let err = s.endpoint(a_addr).err().expect("refused");
    assert!(matches!(err, SharedError::PeerInUse { peer } if peer == a_addr));
    assert!(
        err.to_string().contains(&a_addr.to_string()),
        "names the BMC: {err}"
    );
    assert_eq!(s.stats().refused, 1);
    // The refused registration took nothing from the first.
    a.send_to(b"still mine", s.local_addr()).await.unwrap();
    assert_eq!(recv(&first).await, b"still mine");
    drop(first);
    s.endpoint(a_addr).expect("free once the first is gone");
    // Another family is refused with its own reason.
    let v6: SocketAddr = "[::1]:623".parse().unwrap();
    assert!(matches!(s.endpoint(v6), Err(SharedError::Family { .. })));
}

#[tokio::test]
async fn cancel_ends_the_receive_task_and_waiting_endpoints_fail() {
    let s = shared(16).await;
    let (_a, a_addr) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    let waiting = tokio::spawn(async move { ea.recv().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.cancel();
    tokio::time::timeout(WAIT, s.ended())
        .await
        .expect("task ended");
    let err = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting recv returned")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
    let (_b, b_addr) = bmc_sock().await;
    assert!(matches!(s.endpoint(b_addr), Err(SharedError::Closed)));
}

#[tokio::test]
async fn the_receive_task_ends_with_its_last_user() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let ended = s.owner.core.ended.clone();
    let ea = s.endpoint(a_addr).unwrap();
    drop(s);
    // The endpoint still keeps it running.
    a.send_to(b"x", ea.owner.core.local).await.unwrap();
    assert_eq!(recv(&ea).await, b"x");
    assert!(!ended.is_cancelled());
    drop(ea);
    tokio::time::timeout(WAIT, ended.cancelled())
        .await
        .expect("the task ended with the last endpoint");
}

/// Dropping a waiting recv loses nothing: the datagram that comes after
/// is there for the next recv, also when it came while a future was
/// pending and that future was then dropped.
#[tokio::test]
async fn recv_is_cancel_safe() {
    let s = shared(16).await;
    let (a, a_addr) = bmc_sock().await;
    let ea = s.endpoint(a_addr).unwrap();
    let size = std::mem::size_of_val(&ea.recv());
    assert!(size < 256, "a waiting recv is {size} bytes");
    {
        let mut fut = std::pin::pin!(ea.recv());
        assert!(futures_poll_once(fut.as_mut()).await.is_none());
        a.send_to(b"kept", s.local_addr()).await.unwrap();
        until(&s, |st| st.delivered == 1).await;
        // Dropped without being polled again.
    }
    assert_eq!(recv(&ea).await, b"kept");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), ea.recv())
            .await
            .is_err(),
        "and it is delivered once"
    );
}

async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A test BMC on its own loopback UDP socket.
async fn udp_bmc() -> (SocketAddr, Arc<Control>) {
    let (addr, bmc) = test_bmc::spawn_udp(3, b"secret", None).await.unwrap();
    (addr, bmc.ctl)
}

#[tokio::test]
async fn sessions_with_sol_side_by_side_on_one_socket() {
    let s = shared(16).await;
    let login = SessionConfig::new("admin", b"secret");
    let mut running = Vec::new();
    for i in 0..3u8 {
        let (addr, ctl) = udp_bmc().await;
        let session = Session::open(s.endpoint(addr).unwrap(), &login)
            .await
            .unwrap();
        let cfg = SolConfig {
            session_port: Some(addr.port()),
            ..SolConfig::default()
        };
        let sol = Sol::activate(session, cfg).await.unwrap();
        let (io, mut theirs) = tokio::io::duplex(4096);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move { sol.run(&mut theirs, stop).await });
        running.push((i, io, cancel, task, ctl));
    }
    assert_eq!(s.stats().endpoints, 3);
    for (i, io, ..) in &mut running {
        let line = format!("console {i}\n").into_bytes();
        io.write_all(&line).await.unwrap();
        let mut got = vec![0; line.len()];
        tokio::time::timeout(WAIT, io.read_exact(&mut got))
            .await
            .expect("echo within 5 s")
            .expect("SOL output ended");
        assert_eq!(got, line, "each console gets its own BMC's echo");
    }
    for (i, _, cancel, task, ctl) in running {
        cancel.cancel();
        task.await.unwrap().unwrap();
        let node = ctl.node_rx.lock().unwrap().clone();
        assert_eq!(node, format!("console {i}\n").into_bytes());
        assert!(!*ctl.sol_active.lock().unwrap(), "deactivated");
    }
    until(&s, |st| st.endpoints == 0).await;
    let st = s.stats();
    assert_eq!((st.unknown_peer, st.overflow), (0, 0), "{st:?}");
}

/// A flood does not hold the runtime: the receive task hands datagrams out
/// in batches and lets other tasks run between them (on a current-thread
/// runtime another task sees the count grow in steps, not 0 then all).
#[tokio::test(flavor = "current_thread")]
async fn the_receive_task_yields_between_batches() {
    let s = shared(1000).await;
    let (a, a_addr) = bmc_sock().await;
    let _ea = s.endpoint(a_addr).unwrap();
    const N: u64 = 4 * BATCH as u64;
    for i in 0..N {
        a.send_to(&i.to_le_bytes(), s.local_addr()).await.unwrap();
    }
    let watcher = s.clone();
    let seen = tokio::spawn(async move {
        let mut seen = vec![];
        loop {
            let d = watcher.stats().delivered;
            if seen.last() != Some(&d) {
                seen.push(d);
            }
            if d >= N {
                return seen;
            }
            tokio::task::yield_now().await;
        }
    });
    let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
    let between = seen.iter().filter(|&&d| d > 0 && d < N).count();
    assert!(between >= 2, "counts seen by another task: {seen:?}");
}

/// The shared socket asks for a bigger receive buffer than a socket's
/// default (it takes what thousands of sockets would), within the
/// kernel's `net.core.rmem_max`.
#[tokio::test]
async fn the_shared_socket_has_a_bigger_receive_buffer() {
    let s = shared(16).await;
    let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
    let got = s.recv_buffer().unwrap();
    let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    println!("receive buffer: default {default}, shared {got}, rmem_max {max}");
    if max > default {
        assert!(got > default, "shared {got} vs default {default}");
    }
}

/// A successor waits out its predecessor's teardown: the address freed
/// within the grace period is had; still held after it, refused.
#[tokio::test]
async fn endpoint_within_waits_for_the_address_to_free() {
    let s = shared(16).await;
    let (_a, a_addr) = bmc_sock().await;
    let first = s.endpoint(a_addr).unwrap();
    let dropper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
    });
    let second = s
        .endpoint_within(a_addr, Duration::from_secs(5))
        .await
        .expect("had once the first is gone");
    dropper.await.unwrap();
    assert_eq!(second.peer(), a_addr);
    assert_eq!(s.stats().refused, 1, "refused once while the first held it");
    let err = s
        .endpoint_within(a_addr, Duration::from_millis(20))
        .await
        .err()
        .expect("still held after the grace period");
    assert!(matches!(err, SharedError::PeerInUse { .. }), "{err}");
}
