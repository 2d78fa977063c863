//! The cluster view (`coordinator::etcd::view`) against the rig's real
//! etcd: it follows puts, deletes and lease revocations, survives a cut
//! watch, lists again after a compaction, and its reads are never behind
//! etcd.
//!
//! Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`; each test
//! has its own key prefix and deletes it at the end. The view reaches etcd
//! through a TCP proxy the test can cut.

mod common;
#[path = "support/etcd_proxy.rs"]
mod etcd_proxy;

use std::time::{Duration, Instant};

use console_svc::coordinator::etcd::failover::EtcdClient;
use console_svc::coordinator::etcd::view::{Change, ClusterView};
use etcd_client::Client;
use tokio_util::sync::CancellationToken;

/// A view of a fresh prefix, reached through a proxy, and a direct client.
struct Fixture {
    prefix: String,
    proxy: etcd_proxy::Proxy,
    direct: Client,
    view: ClusterView,
    cancel: CancellationToken,
}

impl Fixture {
    async fn start(test: &str) -> Option<Self> {
        let ep = common::rig_etcd_endpoint("etcd_view")?;
        let prefix = format!(
            "/porthole-test/{test}-{}-{:?}/",
            std::process::id(),
            Instant::now()
        );
        let proxy = etcd_proxy::Proxy::start(&ep).await;
        let direct = Client::connect([ep.as_str()], None).await.unwrap();
        let options = etcd_client::ConnectOptions::new();
        let via_proxy = EtcdClient::connect(
            std::slice::from_ref(&proxy.addr),
            options,
            Duration::from_secs(3),
        )
        .await
        .expect("etcd");
        let cancel = CancellationToken::new();
        let view = ClusterView::start(via_proxy, prefix.clone(), cancel.clone());
        Some(Self {
            prefix,
            proxy,
            direct,
            view,
            cancel,
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn finish(self) {
        self.cancel.cancel();
        let all = etcd_client::DeleteOptions::new().with_prefix();
        let mut kv = self.direct.kv_client();
        kv.delete(self.prefix.as_str(), Some(all)).await.unwrap();
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The mirror follows puts, deletes and a lease revocation, and carries on
/// (re-created watch, nothing missed) after its connection is cut.
#[tokio::test]
async fn the_cluster_view_follows_and_survives_a_cut_watch() {
    let Some(f) = Fixture::start("view").await else {
        return;
    };
    let (direct, view, kv) = (&f.direct, &f.view, |k: &str| f.key(k));
    direct.kv_client().put(kv("a"), "1", None).await.unwrap();
    wait_until("a", || view.get("a").is_some()).await;
    let lease = direct.lease_client().grant(30, None).await.unwrap().id();
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    direct
        .kv_client()
        .put(kv("l1"), "x", Some(opts.clone()))
        .await
        .unwrap();
    direct
        .kv_client()
        .put(kv("l2"), "y", Some(opts))
        .await
        .unwrap();
    wait_until("l1, l2", || view.range("l").len() == 2).await;
    assert_eq!(view.get("l1").unwrap().lease, lease);

    f.proxy.set_open(false);
    direct.lease_client().revoke(lease).await.unwrap();
    direct.kv_client().put(kv("b"), "2", None).await.unwrap();
    direct.kv_client().delete(kv("a"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.proxy.set_open(true);
    wait_until("the changes made while cut", || {
        view.get("b").is_some() && view.get("a").is_none() && view.range("l").is_empty()
    })
    .await;
    f.finish().await;
}

/// When the history the mirror needs is compacted away while its watch is
/// cut, the re-created watch is refused and the mirror lists again: it
/// reports a resync and ends up equal to etcd.
#[tokio::test]
async fn the_cluster_view_lists_again_after_a_compaction() {
    let Some(f) = Fixture::start("compact").await else {
        return;
    };
    let (direct, view, kv) = (&f.direct, &f.view, |k: &str| f.key(k));
    direct.kv_client().put(kv("a"), "1", None).await.unwrap();
    wait_until("a", || view.get("a").is_some()).await;
    let mut changes = view.subscribe();

    f.proxy.set_open(false);
    direct.kv_client().put(kv("b"), "2", None).await.unwrap();
    let deleted = direct.kv_client().delete(kv("a"), None).await.unwrap();
    let now = deleted.header().expect("header").revision();
    direct
        .kv_client()
        .compact(
            now,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    f.proxy.set_open(true);
    wait_until("the changes made while cut", || {
        view.get("b").is_some() && view.get("a").is_none()
    })
    .await;
    let mut resynced = false;
    while let Ok(change) = changes.try_recv() {
        resynced |= change == Change::Resynced;
    }
    assert!(
        resynced,
        "the mirror did not list again after the compaction"
    );
    f.finish().await;
}

/// `read` never lags behind a write made elsewhere (another replica):
/// answered from the mirror once it has caught up with etcd's revision, or
/// from etcd when the revision moved where the mirror cannot see it.
#[tokio::test]
async fn the_cluster_view_reads_are_never_behind_etcd() {
    let Some(f) = Fixture::start("read").await else {
        return;
    };
    let (direct, view, kv) = (&f.direct, &f.view, |k: &str| f.key(k));
    wait_until("the first list", || *view.revision().borrow() > 0).await;
    let outside = format!("{}-outside", f.prefix.trim_end_matches('/'));
    for round in 0..10 {
        let value = format!("{round}");
        direct
            .kv_client()
            .put(kv("n/a"), value.clone(), None)
            .await
            .unwrap();
        // A write outside the prefix moves etcd's revision where the mirror
        // cannot follow: the answer comes from etcd, and is current.
        direct
            .kv_client()
            .put(outside.clone(), "x", None)
            .await
            .unwrap();
        let read = view.read(&["n/"]).await.unwrap();
        assert_eq!(read.len(), 1, "round {round}");
        assert_eq!(read[0].1.value, value.as_bytes(), "round {round}");
        // The last write is ours: the mirror catches up and answers.
        direct.kv_client().delete(kv("n/a"), None).await.unwrap();
        assert!(
            view.read(&["n/"]).await.unwrap().is_empty(),
            "round {round}"
        );
    }
    direct.kv_client().delete(outside, None).await.unwrap();
    f.finish().await;
}
