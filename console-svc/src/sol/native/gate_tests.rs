//! Hub tests of the BMC gate, on tokio's paused clock: a hub whose claim's
//! lease is past its fence deadline (nobody told it: the lease keeper is as
//! good as paused) ends its session locally and sends the BMC nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fake::{Call, FakeLauncher, FakeState, Plan};
use super::hub::{self, HubConfig, HubHandle};
use crate::backend::Health;
use crate::coordinator::gate::testing::Gated;
use crate::coordinator::gate::LeaseState;
use crate::coordinator::{Coordinator, Fence};
use crate::spec::NodeId;

const LEASE: i64 = 41;

struct Rig {
    hub: HubHandle,
    fake: Arc<FakeState>,
    nodes: mpsc::UnboundedReceiver<DuplexStream>,
    _state: watch::Sender<Option<LeaseState>>,
    _health: watch::Receiver<Health>,
}

/// A hub whose lease is valid for `valid_for` from now, never renewed.
async fn rig(valid_for: Duration) -> Rig {
    let (fake, nodes) = FakeState::new();
    let (coordinator, state_tx) = Gated::new(LEASE, valid_for);
    let coordinator = Arc::new(coordinator);
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health_tx, health) = watch::channel(Health::Ok);
    let cfg = HubConfig {
        scrollback_bytes: 1024,
        log_ring_bytes: 4096,
        log_file: None,
        linger: Duration::from_secs(5),
        always_on: false,
        backend: "native",
        max_viewers: 4,
        max_viewers_per_address: 0,
        terminal_timeout: Duration::ZERO,
        terminal_silent_timeout: Duration::ZERO,
        retry_max_backoff: Duration::from_secs(5),
        viewer_queue: 64,
    };
    let hub = hub::spawn(
        cfg,
        Arc::new(FakeLauncher(fake.clone())),
        fence,
        health_tx,
        CancellationToken::new(),
        tracing::Span::none(),
    );
    Rig {
        hub,
        fake,
        nodes,
        _state: state_tx,
        _health: health,
    }
}

impl Rig {
    async fn viewer(&self) -> DuplexStream {
        let (client, server) = duplex(64 * 1024);
        self.hub.join(server, "test-peer").await;
        client
    }

    async fn node(&mut self) -> DuplexStream {
        tokio::time::timeout(Duration::from_secs(30), self.nodes.recv())
            .await
            .expect("a session in time")
            .expect("launcher alive")
    }
}

async fn read_until(s: &mut DuplexStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&seen)));
    seen
}

/// Issue 9 point 1: the paused owner, continued after its deadline, stops
/// its console without `sol deactivate` (which would end the new owner's
/// session); before the deadline, the same stop deactivates.
#[tokio::test(start_paused = true)]
async fn stopping_past_the_deadline_ends_the_session_without_deactivating() {
    let mut r = rig(Duration::from_secs(10)).await;
    let mut a = r.viewer().await;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.hub.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        r.fake.calls(),
        [
            Call::Deactivate,
            Call::Activate,
            Call::End { deactivate: false }
        ]
    );

    let mut r = rig(Duration::from_secs(10)).await;
    let mut a = r.viewer().await;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    r.hub.shutdown(Duration::from_secs(5)).await;
    assert_eq!(r.fake.calls()[2], Call::End { deactivate: true });
}

/// Stopped while ipmitool was still activating, past the deadline: no
/// deactivate to "free the payload".
#[tokio::test(start_paused = true)]
async fn stopping_an_activation_past_the_deadline_sends_nothing() {
    let r = rig(Duration::from_secs(3)).await;
    r.fake.plans.lock().unwrap().push_back(Plan::Hang);
    let _a = r.viewer().await;
    while r.fake.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.hub.shutdown(Duration::from_secs(5)).await;
    assert_eq!(r.fake.calls(), [Call::Deactivate, Call::Activate]);
}

/// A lingering session whose linger ends after the deadline is ended
/// locally.
#[tokio::test(start_paused = true)]
async fn a_linger_that_ends_past_the_deadline_does_not_deactivate() {
    let mut r = rig(Duration::from_secs(3)).await;
    let mut a = r.viewer().await;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        r.fake.calls(),
        [
            Call::Deactivate,
            Call::Activate,
            Call::End { deactivate: false }
        ]
    );
}

/// A viewer arriving after the deadline gets no activation (nor the
/// deactivate before it), and is told why.
#[tokio::test(start_paused = true)]
async fn no_activation_past_the_deadline() {
    let r = rig(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut a = r.viewer().await;
    let got = read_until(&mut a, b"retrying").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("past its fence deadline"), "{text}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(r.fake.calls().is_empty(), "{:?}", r.fake.calls());
}
