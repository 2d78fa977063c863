//! Hub tests: in-memory viewers (`tokio::io::duplex`) and a fake launcher
//! whose sessions are duplex streams too; timing tests run on tokio's paused
//! clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fake::{Call, FakeLauncher, FakeState, Plan};
use super::hub::{self, HubConfig, HubHandle};
use crate::backend::Health;
use crate::coordinator::local::LocalCoordinator;
use crate::coordinator::{Coordinator, Fence};
use crate::spec::NodeId;

/// A hub on a fake launcher, the test's handles on it. Shared with
/// `eviction_tests`.
pub(super) struct Rig {
    pub(super) hub: HubHandle,
    pub(super) fake: Arc<FakeState>,
    nodes: mpsc::UnboundedReceiver<DuplexStream>,
    health: watch::Receiver<Health>,
    coordinator: Arc<LocalCoordinator>,
    fence: Fence,
}

pub(super) fn config() -> HubConfig {
    HubConfig {
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
    }
}

pub(super) async fn rig(cfg: HubConfig) -> Rig {
    let (fake, nodes) = FakeState::new();
    let coordinator = Arc::new(LocalCoordinator::new("r1"));
    let node = NodeId::parse("node-1").unwrap();
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health_tx, health) = watch::channel(Health::Ok);
    let hub = hub::spawn(
        cfg,
        Arc::new(FakeLauncher(fake.clone())),
        fence.clone(),
        health_tx,
        CancellationToken::new(),
        tracing::Span::none(),
    );
    Rig {
        hub,
        fake,
        nodes,
        health,
        coordinator,
        fence,
    }
}

impl Rig {
    pub(super) async fn viewer(&self) -> DuplexStream {
        self.viewer_with_buffer(64 * 1024).await
    }

    async fn viewer_with_buffer(&self, buffer: usize) -> DuplexStream {
        let (client, server) = duplex(buffer);
        self.hub.join(server, "test-peer").await;
        client
    }

    /// A viewer connected from `peer` (the eviction policy looks at it).
    pub(super) async fn viewer_from(&self, peer: &str) -> DuplexStream {
        let (client, server) = duplex(64 * 1024);
        self.hub.join(server, peer).await;
        client
    }

    pub(super) async fn node(&mut self) -> DuplexStream {
        tokio::time::timeout(Duration::from_secs(30), self.nodes.recv())
            .await
            .expect("a session in time")
            .expect("launcher alive")
    }
}

/// Read until `needle` has arrived; everything read.
pub(super) async fn read_until(s: &mut DuplexStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {needle:?} in {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

async fn read_to_eof(s: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("EOF in time")
        .unwrap();
    out
}

const EIGHT_BIT: &[u8] = b"\x00\x03\x1b\xff~.\r\n";

#[tokio::test]
async fn two_viewers_see_all_output_and_both_type_eight_bit_clean() {
    let mut r = rig(config()).await;
    let mut a = r.viewer().await;
    let mut b = r.viewer().await;
    let mut node = r.node().await;
    read_until(&mut a, b"operational").await;
    read_until(&mut b, b"operational").await;
    assert_eq!(r.fake.calls(), [Call::Deactivate, Call::Activate]);

    node.write_all(b"login: ").await.unwrap();
    node.write_all(EIGHT_BIT).await.unwrap();
    for v in [&mut a, &mut b] {
        let got = read_until(v, EIGHT_BIT).await;
        assert!(got.ends_with(b"login: \x00\x03\x1b\xff~.\r\n"), "{got:?}");
    }
    a.write_all(b"from-a\xff\x00").await.unwrap();
    read_until(&mut node, b"from-a\xff\x00").await;
    b.write_all(b"from-b\x03\x1b").await.unwrap();
    read_until(&mut node, b"from-b\x03\x1b").await;
    assert_eq!(*r.health.borrow(), Health::Ok);
    assert_eq!(r.fake.calls().len(), 2, "one session for both viewers");
}

#[tokio::test]
async fn a_late_viewer_gets_the_bounded_scrollback() {
    let mut r = rig(HubConfig {
        scrollback_bytes: 8,
        ..config()
    })
    .await;
    let mut a = r.viewer().await;
    let mut node = r.node().await;
    node.write_all(b"0123456789abcdef").await.unwrap();
    read_until(&mut a, b"cdef").await;
    let mut late = r.viewer().await;
    let got = read_until(&mut late, b"89abcdef").await;
    assert_eq!(got, b"89abcdef", "scrollback only, no banner replay");
    let log = r.hub.log(0);
    assert_eq!(
        (log.data.as_slice(), log.truncated),
        (&b"0123456789abcdef"[..], false),
        "the log keeps more than the scrollback, from the same ring"
    );
}

#[tokio::test]
async fn the_log_ring_keeps_the_newest_output() {
    let mut r = rig(HubConfig {
        log_ring_bytes: 10,
        ..config()
    })
    .await;
    let mut a = r.viewer().await;
    let mut node = r.node().await;
    node.write_all(b"0123").await.unwrap();
    read_until(&mut a, b"0123").await;
    let log = r.hub.log(0);
    assert_eq!((log.data.as_slice(), log.truncated), (&b"0123"[..], false));
    node.write_all(b"456789abc").await.unwrap();
    read_until(&mut a, b"abc").await;
    let log = r.hub.log(0);
    assert_eq!(
        (log.data.as_slice(), log.truncated),
        (&b"3456789abc"[..], true)
    );
    assert_eq!(r.hub.log(3).data, b"abc");
}

#[tokio::test]
async fn one_ring_serves_the_scrollback_and_the_log() {
    let mut r = rig(HubConfig {
        scrollback_bytes: 8,
        log_ring_bytes: 0,
        ..config()
    })
    .await;
    let mut a = r.viewer().await;
    let mut node = r.node().await;
    node.write_all(b"0123456789abcdef").await.unwrap();
    read_until(&mut a, b"cdef").await;
    let log = r.hub.log(0);
    assert_eq!(
        (log.data.as_slice(), log.truncated),
        (&b""[..], true),
        "no log kept, and it says output went unkept"
    );
    let mut late = r.viewer().await;
    let got = read_until(&mut late, b"89abcdef").await;
    assert_eq!(got, b"89abcdef", "the scrollback still replays");
}

#[tokio::test(start_paused = true)]
async fn the_session_lingers_after_the_last_viewer_and_survives_a_return() {
    let mut r = rig(config()).await;
    let mut a = r.viewer().await;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        r.fake.calls(),
        [Call::Deactivate, Call::Activate],
        "still lingering"
    );

    let mut b = r.viewer().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        r.fake.calls().len(),
        2,
        "the viewer came back in time: same session"
    );
    b.shutdown().await.unwrap();
    drop(b);

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(r.fake.calls().len(), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.fake.calls()[2], Call::End { deactivate: true });

    let _c = r.viewer().await;
    let _node = r.node().await;
    assert_eq!(
        r.fake.calls()[3..],
        [Call::Deactivate, Call::Activate],
        "idle again: the next viewer activates anew, deactivating first"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_activations_back_off_exponentially_and_tell_the_viewer() {
    let mut r = rig(config()).await;
    *r.fake.fail_by_default.lock().unwrap() =
        Some("Info: SOL payload already active on another session");
    let mut a = r.viewer().await;
    let got = read_until(&mut a, b"retrying in 1s]\r\n").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains(
            "[porthole: SOL session failed: BMC 127.0.0.1:623: Info: SOL payload already active"
        ),
        "{text}"
    );
    match &*r.health.borrow() {
        Health::Failed(m) => assert!(m.contains("already active on another session"), "{m}"),
        h => panic!("{h:?}"),
    }
    tokio::time::sleep(Duration::from_secs(25)).await;
    let times = r.fake.times_of(&Call::Activate);
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps[..6], [1, 2, 4, 5, 5, 5], "{gaps:?}");
    assert_eq!(
        r.fake.times_of(&Call::Deactivate).len(),
        times.len(),
        "deactivate before each"
    );

    // The BMC recovers: the next retry succeeds and health is Ok again.
    *r.fake.fail_by_default.lock().unwrap() = None;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    assert_eq!(*r.health.borrow(), Health::Ok);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_last_viewer_leaves() {
    let r = rig(config()).await;
    *r.fake.fail_by_default.lock().unwrap() =
        Some("Error: Unable to establish IPMI v2 / RMCP+ session");
    let mut a = r.viewer().await;
    read_until(&mut a, b"retrying").await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.fake.times_of(&Call::Activate).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_session_that_ends_by_itself_is_retried() {
    let mut r = rig(config()).await;
    let mut a = r.viewer().await;
    let node = r.node().await;
    read_until(&mut a, b"operational").await;
    drop(node); // ipmitool exited
    read_until(&mut a, b"[porthole: SOL session failed: SOL session ended").await;
    assert!(matches!(&*r.health.borrow(), Health::Failed(_)));
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    assert_eq!(*r.health.borrow(), Health::Ok);
    assert_eq!(
        r.fake.calls(),
        [
            Call::Deactivate,
            Call::Activate,
            Call::End { deactivate: false },
            Call::Deactivate,
            Call::Activate
        ]
    );
}

#[tokio::test]
async fn a_slow_viewer_is_disconnected_without_holding_up_the_others() {
    let mut r = rig(HubConfig {
        viewer_queue: 4,
        ..config()
    })
    .await;
    let mut fast = r.viewer().await;
    let mut slow = r.viewer_with_buffer(1024).await;
    let mut node = r.node().await;
    read_until(&mut fast, b"operational").await;
    let chunk = vec![b'x'; 1000];
    for _ in 0..50 {
        node.write_all(&chunk).await.unwrap();
        let mut got = vec![0; chunk.len()];
        tokio::time::timeout(Duration::from_secs(5), fast.read_exact(&mut got))
            .await
            .expect("the fast viewer keeps up")
            .unwrap();
    }
    let got = read_to_eof(&mut slow).await;
    assert!(got.len() < 50 * chunk.len(), "the slow viewer was cut off");
    assert!(
        got.ends_with(
            b"[porthole: disconnected: this connection fell too far behind the console output]\r\n"
        ),
        "{:?}",
        String::from_utf8_lossy(&got[got.len().saturating_sub(120)..])
    );
    node.write_all(b"still here").await.unwrap();
    read_until(&mut fast, b"still here").await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_viewer_is_closed_after_terminal_timeout() {
    let mut r = rig(HubConfig {
        terminal_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut a = r.viewer().await;
    let mut node = r.node().await;
    read_until(&mut a, b"operational").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    node.write_all(b"tick").await.unwrap();
    read_until(&mut a, b"tick").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    a.write_all(b"k").await.unwrap();
    read_until(&mut node, b"k").await;
    let before = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), a.read_to_end(&mut rest))
        .await
        .expect("closed for idling")
        .unwrap();
    assert_eq!(rest, b"");
    let idle = Instant::now() - before;
    assert!(
        idle >= Duration::from_secs(29) && idle <= Duration::from_secs(31),
        "{idle:?}"
    );
}

#[tokio::test]
async fn stop_disconnects_viewers_and_ends_the_session_cleanly() {
    let mut r = rig(config()).await;
    let mut a = r.viewer().await;
    let _node = r.node().await;
    read_until(&mut a, b"operational").await;
    r.hub.shutdown(Duration::from_secs(5)).await;
    read_to_eof(&mut a).await;
    assert_eq!(r.fake.calls().last(), Some(&Call::End { deactivate: true }));
}

#[tokio::test]
async fn stop_during_activation_still_frees_the_payload() {
    let r = rig(config()).await;
    r.fake.plans.lock().unwrap().push_back(Plan::Hang);
    let _a = r.viewer().await;
    while r.fake.calls().len() < 2 {
        tokio::task::yield_now().await;
    }
    r.hub.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        r.fake.calls(),
        [Call::Deactivate, Call::Activate, Call::Deactivate]
    );
}

#[tokio::test]
async fn a_fenced_console_never_touches_the_bmc() {
    let r = rig(config()).await;
    r.coordinator.release(r.fence.ownership()).await.unwrap();
    let mut a = r.viewer().await;
    let got = read_until(&mut a, b"retrying").await;
    assert!(String::from_utf8_lossy(&got).contains("node node-1 is owned by"));
    assert!(r.fake.calls().is_empty());
}
