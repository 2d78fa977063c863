//! The etcd coordinator against the rig's real etcd: ownership
//! transactions, fencing tokens, lease revocation, and self-fencing when
//! etcd becomes unreachable (through a TCP proxy this test cuts).
//!
//! Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`. Each test
//! uses its own key prefix, so tests never see each other's keys.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use console_svc::coordinator::etcd::{EtcdCoordinator, EtcdSettings, Member};
use console_svc::coordinator::{CoordError, Coordinator};
use console_svc::spec::NodeId;
use tokio_util::sync::CancellationToken;

fn settings(endpoint: &str, prefix: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![endpoint.to_owned()],
        prefix: prefix.to_owned(),
        lease_ttl: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
    }
}

fn unique_prefix(test: &str) -> String {
    format!(
        "/porthole-test/{test}-{}-{:?}/",
        std::process::id(),
        Instant::now()
    )
}

async fn replica(
    endpoint: &str,
    prefix: &str,
    name: &str,
) -> (Arc<EtcdCoordinator>, CancellationToken) {
    let cancel = CancellationToken::new();
    let member = Member {
        replica: name.into(),
        host: "127.0.0.1".into(),
        grpc: "127.0.0.1:1".into(),
    };
    let c = EtcdCoordinator::start(settings(endpoint, prefix), member, cancel.clone())
        .await
        .expect("connects to etcd");
    let mut serving = c.serving();
    tokio::time::timeout(Duration::from_secs(5), serving.wait_for(|s| *s))
        .await
        .expect("serving within 5 s")
        .unwrap();
    (c, cancel)
}

#[tokio::test]
async fn one_owner_at_a_time_with_growing_tokens() {
    let Some(ep) = common::rig_etcd_endpoint("etcd_rig") else {
        return;
    };
    let prefix = unique_prefix("owner");
    let (a, _ca) = replica(&ep, &prefix, "replica-a").await;
    let (b, _cb) = replica(&ep, &prefix, "replica-b").await;
    let node = NodeId::parse("node-1").unwrap();

    let mine = a.acquire(&node).await.expect("a claims a free node");
    assert_eq!(
        a.acquire(&node).await.unwrap(),
        mine,
        "a re-claim is the same claim"
    );
    match b.acquire(&node).await {
        Err(CoordError::Fenced { owner, .. }) => assert_eq!(owner, "replica-a"),
        other => panic!("b must be refused, got {other:?}"),
    }
    a.check(&mine).await.expect("a's claim holds");

    a.release(&mine).await.unwrap();
    let theirs = b.acquire(&node).await.expect("b claims a released node");
    assert!(theirs.token > mine.token, "fencing tokens grow");
    assert!(a.check(&mine).await.is_err(), "a's old claim is fenced");
    b.check(&theirs).await.unwrap();
}

#[tokio::test]
async fn a_stopped_replica_revokes_its_lease_and_its_consoles_are_free() {
    let Some(ep) = common::rig_etcd_endpoint("etcd_rig") else {
        return;
    };
    let prefix = unique_prefix("revoke");
    let (a, stop_a) = replica(&ep, &prefix, "replica-a").await;
    let (b, _cb) = replica(&ep, &prefix, "replica-b").await;
    let node = NodeId::parse("node-2").unwrap();
    a.acquire(&node).await.unwrap();
    assert!(b.acquire(&node).await.is_err());

    stop_a.cancel();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match b.acquire(&node).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("b could not take over after a revoked its lease: {e}"),
        }
    }
}

#[path = "support/etcd_proxy.rs"]
mod etcd_proxy;
use etcd_proxy::Proxy;

#[tokio::test]
async fn a_replica_cut_off_from_etcd_stops_serving_before_its_lease_expires() {
    let Some(ep) = common::rig_etcd_endpoint("etcd_rig") else {
        return;
    };
    let prefix = unique_prefix("cut");
    let proxy = Proxy::start(&ep).await;
    let (a, _ca) = replica(&proxy.addr, &prefix, "replica-a").await;
    let (b, _cb) = replica(&ep, &prefix, "replica-b").await;
    let node = NodeId::parse("node-3").unwrap();
    a.acquire(&node).await.unwrap();

    let mut serving = a.serving();
    proxy.set_open(false);
    let cut_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), serving.wait_for(|s| !*s))
        .await
        .expect("a stops serving within the TTL")
        .unwrap();
    let fenced_after = cut_at.elapsed();
    // b may take the node only once a's lease expired at the server; a has
    // already stopped by then.
    assert!(
        b.acquire(&node).await.is_err(),
        "a's lease still holds the key"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    let taken_after = loop {
        if b.acquire(&node).await.is_ok() {
            break cut_at.elapsed();
        }
        assert!(Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        fenced_after < taken_after,
        "a stopped at {fenced_after:?}, b took over at {taken_after:?}"
    );

    proxy.set_open(true);
    tokio::time::timeout(Duration::from_secs(10), serving.wait_for(|s| *s))
        .await
        .expect("a serves again once etcd is back, without a restart")
        .unwrap();
}
