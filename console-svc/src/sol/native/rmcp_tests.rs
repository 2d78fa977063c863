//! Unit tests of the rmcp backend's own parts: the fenced transport sends
//! nothing once the lease is past its deadline (paused clock).

use std::sync::Arc;
use std::time::Duration;

use porthole_rmcp::transport::Datagram;

use super::FencedUdp;
use crate::coordinator::gate::testing::Gated;
use crate::coordinator::{Coordinator, Fence};
use crate::spec::NodeId;

#[tokio::test(start_paused = true)]
async fn nothing_reaches_the_bmc_past_the_lease_deadline() {
    let bmc = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (coordinator, _state) = Gated::new(7, Duration::from_secs(2));
    let coordinator = Arc::new(coordinator);
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let udp = FencedUdp::connect(bmc.local_addr().unwrap(), fence)
        .await
        .unwrap();
    udp.send(b"while valid").await.unwrap();
    let mut buf = [0u8; 64];
    let n = bmc.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"while valid");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = udp.send(b"too late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // Nothing arrived: the next datagram the BMC sees is this probe.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe
        .send_to(b"probe", bmc.local_addr().unwrap())
        .await
        .unwrap();
    let n = bmc.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"probe");
}
