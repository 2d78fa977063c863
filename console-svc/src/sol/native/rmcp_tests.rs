//! Unit tests of the rmcp backend's own parts, on tokio's paused clock: the
//! fenced transport (over its own socket or the shared one) sends nothing
//! once the lease is past its deadline, and
//! `serve` (over porthole-rmcp's in-memory BMC) ends an idle session at
//! the deadline without a word to the BMC, or keeps it while renewed.

use std::sync::Arc;
use std::time::Duration;

use porthole_rmcp::transport::Datagram;

use super::{udp_pool, FencedUdp};
use crate::config::RmcpUdp;
use crate::coordinator::gate::testing::Gated;
use crate::coordinator::{Coordinator, Fence};
use crate::spec::NodeId;

#[tokio::test(start_paused = true)]
async fn nothing_reaches_the_bmc_past_the_lease_deadline() {
    for mode in [RmcpUdp::Shared, RmcpUdp::PerConsole] {
        nothing_past_the_deadline(mode).await;
    }
}

async fn nothing_past_the_deadline(mode: RmcpUdp) {
    let bmc = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (coordinator, _state) = Gated::new(7, Duration::from_secs(2));
    let coordinator = Arc::new(coordinator);
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let pool = udp_pool(mode);
    let udp = FencedUdp::open(&pool, bmc.local_addr().unwrap(), fence)
        .await
        .unwrap();
    udp.send(b"while valid").await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = bmc.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"while valid", "{mode:?}");
    // Answers come back through it (either transport).
    bmc.send_to(b"answer", from).await.unwrap();
    assert_eq!(udp.recv().await.unwrap(), b"answer");
    let shared = matches!(pool.stats(), (Some(st), None) if st.endpoints == 1);
    assert_eq!(
        shared,
        mode == RmcpUdp::Shared,
        "{mode:?}: {:?}",
        pool.stats()
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = udp.send(b"too late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    drop(udp);
    // Nothing arrived: the next datagram the BMC sees is this probe.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe
        .send_to(b"probe", bmc.local_addr().unwrap())
        .await
        .unwrap();
    let n = bmc.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"probe");
}

/// A session on the in-memory BMC, bridged as the backend does, under a
/// lease valid for `valid_for`: (the hub's end, the serving task, its why, the BMC).
async fn bridged(
    valid_for: Duration,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<()>,
    Arc<std::sync::Mutex<Option<String>>>,
    porthole_rmcp::test_bmc::TestBmc,
    tokio::sync::watch::Sender<Option<crate::coordinator::gate::LeaseState>>,
) {
    let (t, bmc) = porthole_rmcp::test_bmc::spawn(3, b"secret");
    let session =
        porthole_rmcp::Session::open(t, &porthole_rmcp::SessionConfig::new("admin", b"secret"))
            .await
            .unwrap();
    let sol = porthole_rmcp::Sol::activate(session, porthole_rmcp::SolConfig::default())
        .await
        .unwrap();
    let (coordinator, state) = Gated::new(7, valid_for);
    let coordinator = Arc::new(coordinator);
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (ours, theirs) = tokio::io::duplex(4096);
    let why = Arc::new(std::sync::Mutex::new(None));
    let task = tokio::spawn(super::serve(
        sol,
        theirs,
        tokio_util::sync::CancellationToken::new(),
        fence,
        why.clone(),
        "test-bmc".into(),
    ));
    (ours, task, why, bmc, state)
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_ends_at_the_lease_deadline_without_telling_the_bmc() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut hub, task, why, bmc, _state) = bridged(Duration::from_secs(2)).await;
    hub.write_all(b"hi").await.unwrap();
    let mut echo = [0u8; 2];
    hub.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hi");
    let before = bmc.ctl.requests.lock().unwrap().clone();
    // Nothing happens on the line; the lease is never renewed.
    let start = tokio::time::Instant::now();
    task.await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(2),
        "ended at the 2 s deadline, not {took:?}"
    );
    let said = why.lock().unwrap().clone().unwrap();
    assert!(said.starts_with("lease not known valid"), "{said}");
    let mut rest = Vec::new();
    hub.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the hub's stream just closed");
    assert_eq!(
        *bmc.ctl.requests.lock().unwrap(),
        before,
        "no Deactivate, no Close"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewed_lease_keeps_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut hub, task, _why, _bmc, state) = bridged(Duration::from_secs(2)).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        state.send_replace(Some(crate::coordinator::gate::LeaseState {
            lease: 7,
            valid_until: tokio::time::Instant::now() + Duration::from_secs(2),
        }));
    }
    assert!(!task.is_finished(), "renewed every second: still up");
    hub.write_all(b"ok").await.unwrap();
    let mut echo = [0u8; 2];
    hub.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ok");
}

/// The pool's figures as the metrics read them: sessions on the shared
/// socket, and a second session to one BMC address on a socket of its own.
#[tokio::test]
async fn the_udp_pool_reports_its_figures_to_the_metrics() {
    use crate::metrics::RmcpUdpSource;
    let bmc = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pool = udp_pool(RmcpUdp::Shared);
    let first = pool.open(bmc.local_addr().unwrap()).await.unwrap();
    let second = pool.open(bmc.local_addr().unwrap()).await.unwrap();
    let c = pool.rmcp_udp();
    assert_eq!((c.shared_sessions, c.own_socket), (1, 1), "{c:?}");
    drop((first, second));
    assert_eq!(pool.rmcp_udp().shared_sessions, 0);
    assert_eq!(udp_pool(RmcpUdp::PerConsole).rmcp_udp(), Default::default());
}

#[tokio::test]
async fn ip_literals_resolve_without_the_resolver_and_names_with_it() {
    use crate::secret::Secret;
    use crate::spec::{IpmiTarget, PrivilegeLevel};
    let target = |address: &str| IpmiTarget {
        address: address.into(),
        port: 623,
        username: "admin".into(),
        password: Secret::new("pw"),
        cipher_suite: 3,
        privilege: PrivilegeLevel::Administrator,
    };
    let v4 = super::resolve(&target("192.0.2.7")).await.unwrap();
    assert_eq!(v4, "192.0.2.7:623".parse().unwrap());
    let v6 = super::resolve(&target("[2001:db8::7]")).await.unwrap();
    assert_eq!(v6, "[2001:db8::7]:623".parse().unwrap());
    let bare_v6 = super::resolve(&target("2001:db8::7")).await.unwrap();
    assert_eq!(bare_v6, v6);
    let named = super::resolve(&target("localhost")).await.unwrap();
    assert!(named.ip().is_loopback(), "{named}");
    assert_eq!(named.port(), 623);
}
