//! The rmcp probe against porthole-rmcp's test BMC on loopback UDP: an
//! answer is a healthy BMC, a wrong password a readable refusal, and past
//! the lease's deadline nothing is sent at all.

use std::sync::Arc;
use std::time::Duration;

use porthole_rmcp::test_bmc::{self, Control};

use super::RmcpProbe;
use crate::backend::BmcProbe;
use crate::coordinator::gate::testing::Gated;
use crate::coordinator::{Coordinator, Fence};
use crate::secret::Secret;
use crate::spec::{IpmiTarget, NodeId, PrivilegeLevel};

/// A test BMC with password `secret`, and a probe of it with `password`
/// under a lease valid for `valid_for`.
async fn probe_of(password: &str, valid_for: Duration) -> (RmcpProbe, Arc<Control>) {
    let (addr, bmc) = test_bmc::spawn_udp(3, b"secret", None).await.unwrap();
    let ctl = bmc.ctl.clone();
    let (coordinator, _state) = Gated::new(7, valid_for);
    let coordinator = Arc::new(coordinator);
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let target = IpmiTarget {
        address: "127.0.0.1".into(),
        port: addr.port(),
        username: "admin".into(),
        password: Secret::new(password),
        cipher_suite: 3,
        privilege: PrivilegeLevel::Administrator,
    };
    let probe = RmcpProbe {
        target,
        fence,
        timeout: Duration::from_secs(10),
    };
    (probe, ctl)
}

#[tokio::test]
async fn a_bmc_that_answers_passes_and_its_session_is_closed() {
    let (probe, ctl) = probe_of("secret", Duration::from_secs(60)).await;
    probe.probe().await.unwrap();
    let asked = ctl.requests.lock().unwrap().clone();
    assert!(
        asked.contains(&(0x00, 0x01)),
        "Get Chassis Status: {asked:?}"
    );
    assert_eq!(asked.last(), Some(&(0x06, 0x3c)), "then Close Session");
    assert!(
        !asked.contains(&(0x06, 0x48)),
        "no SOL activation: {asked:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_with_a_readable_error() {
    let (probe, _ctl) = probe_of("not-the-password", Duration::from_secs(60)).await;
    let err = probe.probe().await.unwrap_err().to_string();
    assert!(err.starts_with("BMC 127.0.0.1:"), "{err}");
    assert!(err.contains("password"), "says what is wrong: {err}");
    assert!(
        !err.contains("not-the-password"),
        "no password in the error: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_once_the_lease_is_past_its_deadline() {
    let (probe, ctl) = probe_of("secret", Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = probe.probe().await.unwrap_err().to_string();
    assert!(err.contains("lease") || err.contains("deadline"), "{err}");
    assert!(
        ctl.requests.lock().unwrap().is_empty(),
        "the BMC heard nothing"
    );
}
