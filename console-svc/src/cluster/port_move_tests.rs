//! Placement's busy-port move on the in-memory store: a spec whose port
//! the service chose (`port_auto`) and that this replica cannot bind is
//! moved to the next free port and served there; a kept port is not moved.
//! The same against etcd, with a listener and a TIME_WAIT on the owner's
//! address, is the rig test `cluster_api::ports`.

use std::net::TcpListener;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::memory::MemoryEtcd;
use super::store::ClusterStore;
use super::tests::{member, node, spec, Fake};
use crate::coordinator::etcd::keys::Keys;

const KEYS: Keys = Keys::relative();

/// Four consecutive ports whose first one we hold: (range, the listener).
fn range_with_first_busy() -> (String, u16, TcpListener) {
    for _ in 0..50 {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let first = held.local_addr().unwrap().port();
        if first < 65000 {
            return (format!("{first}:{}", first + 4), first, held);
        }
    }
    panic!("no usable ephemeral port");
}

#[tokio::test]
async fn a_chosen_port_that_is_busy_here_moves_a_kept_one_does_not() {
    let (range, first, _held) = range_with_first_busy();
    let etcd = MemoryEtcd::new(&range);
    let cancel = CancellationToken::new();
    let a = member(&etcd, "replica-a", Fake::default(), &cancel);
    let info = tokio::time::timeout(
        super::tests::ENABLE_TIMEOUT * 2,
        a.cluster.enable(spec("node-1")),
    )
    .await
    .expect("enable answers")
    .expect("served on another port");
    let port = info.endpoint.expect("running").port;
    assert_ne!(port, first, "the busy port was passed over");
    let stored = a.store.get(&KEYS.spec(&node("node-1"))).unwrap();
    let opened = a
        .store
        .decode_spec(&node("node-1"), &stored.value, stored.mod_revision)
        .unwrap();
    assert_eq!((opened.port, opened.port_auto), (port, true));
    assert!(a.store.get(&KEYS.port(first)).is_none(), "not reserved");

    // Kept: after a disable the node's port is its own, and a spec written
    // with it is not the service's fresh choice (never moved).
    a.cluster.disable(&node("node-1")).await.unwrap();
    let again = a.cluster.enable(spec("node-1")).await.unwrap();
    assert_eq!(again.endpoint.unwrap().port, port);
    let stored = a.store.get(&KEYS.spec(&node("node-1"))).unwrap();
    let opened = a
        .store
        .decode_spec(&node("node-1"), &stored.value, stored.mod_revision)
        .unwrap();
    assert!(!opened.port_auto, "a kept port");
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// A claim that cannot start the console (here: its port in use) records
/// why, bound to the claimer; Enable's deadline error and Get say it, and a
/// later start clears it.
#[tokio::test(start_paused = true)]
async fn why_a_claim_failed_is_told_until_a_start_succeeds() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let failing = Fake {
        failing: ["node-1".to_owned()].into(),
        ..Fake::default()
    };
    let a = member(&etcd, "replica-a", failing, &cancel);
    let err = a.cluster.enable(spec("node-1")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("replica replica-a could not start it") && msg.contains("in use"),
        "{msg}"
    );
    let key = KEYS.failure(&node("node-1"));
    assert!(etcd.get(&key).is_some());

    // Another replica that can start it does, and the record goes.
    let b = member(&etcd, "replica-b", Fake::default(), &cancel);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while etcd.owner(&node("node-1")).map(|o| o.0) != Some("replica-b".into()) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "replica-b never claimed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(etcd.get(&key).is_none(), "cleared by the start that worked");
    drop(b);
    cancel.cancel();
}
