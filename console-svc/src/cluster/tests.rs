//! Placement, publish and Enable's wait on the in-memory store
//! ([`super::memory`]), on tokio's paused clock: rank order and rank delay,
//! claim back-off, restart after a fence, an unwanted console dropped, and
//! Enable returning once the owner publishes (or at its deadline). The same
//! paths against a real etcd are the rig tests (`etcd_view`, `cluster_api`,
//! `ha_rig`).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::memory::{MemoryEtcd, Replica};
use super::placement::rank;
use super::store::ClusterStore;
use super::{forward::PeerTls, Cluster, ClusterSettings};
use crate::backend::{BackendError, ConsoleBackend, ConsoleContext, LogSnapshot, RunningConsole};
use crate::config::Config;
use crate::coordinator::etcd::keys::Keys;
use crate::coordinator::etcd::spec_doc::SpecTimes;
use crate::error::ConsoleError;
use crate::manager::{Backends, ConsoleManager, ConsoleState, Placement};
use crate::process::ProcessTable;
use crate::spec::{ConsoleSpec, NodeId, Target, VncTarget};

/// Claim delay per rank.
const STEP: Duration = Duration::from_secs(2);
pub(super) const ENABLE_TIMEOUT: Duration = Duration::from_secs(3);
const KEYS: Keys = Keys::relative();

/// A backend that records its starts, can be slow, and fails for some nodes.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) delay: Duration,
    pub(super) failing: HashSet<String>,
    pub(super) starts: Mutex<Vec<(String, Instant)>>,
    pub(super) running: Arc<Mutex<BTreeSet<String>>>,
}

struct FakeConsole {
    node: String,
    running: Arc<Mutex<BTreeSet<String>>>,
}

#[async_trait]
impl ConsoleBackend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        let node = ctx.node.to_string();
        self.starts
            .lock()
            .unwrap()
            .push((node.clone(), Instant::now()));
        tokio::time::sleep(self.delay).await;
        if self.failing.contains(&node) {
            return Err(BackendError::PortInUse { addr: ctx.listen });
        }
        self.running.lock().unwrap().insert(node.clone());
        Ok(Box::new(FakeConsole {
            node,
            running: self.running.clone(),
        }))
    }
}

#[async_trait]
impl RunningConsole for FakeConsole {
    async fn stop(self: Box<Self>) {
        self.running.lock().unwrap().remove(&self.node);
    }

    fn log(&self, _max_bytes: usize) -> Option<LogSnapshot> {
        None
    }
}

impl Fake {
    fn starts_of(&self, node: &str) -> Vec<Instant> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(n, _)| n == node)
            .map(|s| s.1)
            .collect()
    }

    fn running(&self) -> BTreeSet<String> {
        self.running.lock().unwrap().clone()
    }
}

/// One replica: its store handle, manager, cluster layer and backend.
pub(super) struct Member {
    pub(super) store: Arc<Replica>,
    pub(super) manager: ConsoleManager,
    pub(super) cluster: Cluster,
    pub(super) backend: Arc<Fake>,
    _dir: tempfile::TempDir,
}

pub(super) fn member(
    etcd: &MemoryEtcd,
    id: &str,
    backend: Fake,
    cancel: &CancellationToken,
) -> Member {
    let store = etcd.replica(id);
    let dir = tempfile::tempdir().unwrap();
    let processes = Arc::new(ProcessTable::open(dir.path(), Duration::from_secs(1)).unwrap());
    let backend = Arc::new(backend);
    let backends = Backends {
        serial: backend.clone(),
        vnc: Some(backend.clone()),
    };
    let manager = ConsoleManager::new(
        Arc::new(Config::default()),
        backends,
        store.clone(),
        processes,
        Placement::Cluster,
        cancel.child_token(),
    );
    let settings = ClusterSettings {
        enable_timeout: ENABLE_TIMEOUT,
        claim_step: STEP,
        peer_tls: PeerTls::default(),
    };
    let cluster = Cluster::with_store(store.clone(), manager.clone(), settings, cancel.clone());
    Member {
        store,
        manager,
        cluster,
        backend,
        _dir: dir,
    }
}

pub(super) fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

pub(super) fn spec(id: &str) -> ConsoleSpec {
    ConsoleSpec {
        node: node(id),
        target: Target::Vnc(VncTarget {
            host: "127.0.0.1".into(),
            port: 5900,
            password: None,
        }),
        requested_port: None,
    }
}

/// Write a spec as any replica's Enable does (without waiting).
async fn put(store: &Replica, id: &str) {
    let times = SpecTimes::new_at(SystemTime::now());
    store.put_spec(&spec(id), times).await.unwrap();
}

/// The owner of `id` once there is one (polled every 10 ms, at most a minute).
async fn owner_of(etcd: &MemoryEtcd, id: &str) -> (String, i64) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(owner) = etcd.owner(&node(id)) {
            return owner;
        }
        assert!(Instant::now() < give_up, "nobody claimed {id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn idle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn the_best_ranked_live_replica_claims_first_the_next_only_after_its_delay() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let ids = ["replica-a", "replica-b", "replica-c"];
    let members: Vec<Member> = ids
        .iter()
        .map(|id| member(&etcd, id, Fake::default(), &cancel))
        .collect();
    let by_id = |id: &str| members.iter().find(|m| m.store.replica() == id).unwrap();

    // Everyone serving: the best-ranked replica claims at once.
    for n in ["node-1", "node-2", "node-3", "node-4"] {
        let t0 = Instant::now();
        put(&by_id(ids[0]).store, n).await;
        let (owner, _) = owner_of(&etcd, n).await;
        assert_eq!(owner, rank(n, ids)[0], "{n}");
        assert!(
            t0.elapsed() < STEP / 4,
            "{n} claimed after {:?}",
            t0.elapsed()
        );
    }

    // The best one not serving (still a member): rank 1 after one step.
    let n = "node-5";
    let ranked = rank(n, ids);
    by_id(ranked[0]).store.pause();
    let t0 = Instant::now();
    put(&by_id(ranked[2]).store, n).await;
    let (owner, _) = owner_of(&etcd, n).await;
    let took = t0.elapsed();
    assert_eq!(owner, ranked[1]);
    assert!(
        took >= STEP && took < STEP + STEP / 4,
        "claimed after {took:?}"
    );
    // The best two not serving: rank 2 after two steps.
    by_id(ranked[0]).store.rejoin();
    idle(STEP * 3).await;
    let n = "node-6";
    let ranked = rank(n, ids);
    for r in &ranked[..2] {
        by_id(r).store.pause();
    }
    let t0 = Instant::now();
    put(&by_id(ranked[0]).store, n).await;
    let (owner, _) = owner_of(&etcd, n).await;
    let took = t0.elapsed();
    assert_eq!(owner, ranked[2]);
    assert!(
        took >= STEP * 2 && took < STEP * 2 + STEP / 4,
        "claimed after {took:?}"
    );
    // Each console runs once, where it is owned (a paused replica's
    // consoles were stopped and claimed elsewhere).
    idle(STEP * 3).await;
    for m in &members {
        for n in m.backend.running() {
            assert_eq!(etcd.owner(&node(&n)).unwrap().0, m.store.replica());
        }
    }
    let running: usize = members.iter().map(|m| m.backend.running().len()).sum();
    assert_eq!(running, 6);
    cancel.cancel();
}

/// Regression: a replica that stopped serving with a claim due in the past
/// woke at once, forever, starving its runtime (the test's clock stood still
/// and it hung). Run on a thread of its own so the spin fails the test.
#[test]
fn a_replica_that_stops_serving_with_claims_pending_waits_without_spinning() {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let etcd = MemoryEtcd::new("13000:13020");
            let cancel = CancellationToken::new();
            let ids = ["replica-a", "replica-b"];
            let n = "node-1";
            let second = rank(n, ids)[1];
            let first = member(&etcd, rank(n, ids)[0], Fake::default(), &cancel);
            let later = member(&etcd, second, Fake::default(), &cancel);
            first.store.pause();
            put(&later.store, n).await;
            idle(STEP / 2).await;
            // Its claim is due at STEP; it stops serving before, and the
            // due time passes while it does not serve.
            later.store.pause();
            idle(STEP * 5).await;
            assert_eq!(etcd.owner(&node(n)), None);
            // Serving again, it claims.
            later.store.rejoin();
            let (owner, _) = owner_of(&etcd, n).await;
            assert_eq!(owner, second);
            cancel.cancel();
        });
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(30))
        .expect("placement spun instead of waiting (or the test failed: see its panic)");
}

#[tokio::test(start_paused = true)]
async fn a_console_that_fails_to_start_is_claimed_again_with_growing_pauses() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let failing = Fake {
        failing: ["bad".to_owned()].into(),
        ..Fake::default()
    };
    let a = member(&etcd, "replica-a", failing, &cancel);
    put(&a.store, "bad").await;
    put(&a.store, "good").await;
    idle(Duration::from_secs(20)).await;

    let starts = a.backend.starts_of("bad");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s, then doubling: claims at about 0, 1, 3, 7 and 15 s.
    assert_eq!(gaps.len(), 4, "starts after {gaps:?}");
    for (gap, want) in gaps.iter().zip([1, 2, 4, 8]) {
        let want = Duration::from_secs(want);
        assert!(
            *gap >= want && *gap < want + Duration::from_millis(200),
            "{gaps:?}"
        );
    }
    // The failed claim is released each time; the good console is unaffected.
    assert_eq!(etcd.owner(&node("bad")), None);
    assert_eq!(a.backend.starts_of("good").len(), 1);
    assert_eq!(a.backend.running(), BTreeSet::from(["good".to_owned()]));
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn after_a_fence_consoles_come_back_by_rank_not_all_to_the_fenced_replica() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let a = member(&etcd, "replica-a", Fake::default(), &cancel);
    let nodes: Vec<String> = (0..8).map(|i| format!("node-{i}")).collect();
    for n in &nodes {
        put(&a.store, n).await;
    }
    idle(Duration::from_millis(200)).await;
    assert_eq!(
        a.backend.running().len(),
        nodes.len(),
        "a alone runs them all"
    );

    // b joins: nothing moves (ownership is sticky).
    let b = member(&etcd, "replica-b", Fake::default(), &cancel);
    idle(STEP * 2).await;
    let before: Vec<(String, i64)> = nodes
        .iter()
        .map(|n| etcd.owner(&node(n)).unwrap())
        .collect();
    assert!(before.iter().all(|(owner, _)| owner == "replica-a"));
    assert!(b.backend.running().is_empty());

    // a's lease expires and it gets a new one at once.
    let ids = ["replica-a", "replica-b"];
    let (for_a, for_b): (Vec<&String>, Vec<&String>) =
        nodes.iter().partition(|n| rank(n, ids)[0] == "replica-a");
    assert!(
        !for_a.is_empty() && !for_b.is_empty(),
        "both ranks first somewhere"
    );
    let t0 = Instant::now();
    a.store.lose_lease();
    a.store.rejoin();

    // Each console is claimed by the replica ranked first for it, before
    // the other's rank delay runs out, with a new fencing token.
    for (n, (_, old)) in nodes.iter().zip(&before) {
        let (owner, token) = owner_of(&etcd, n).await;
        assert_eq!(owner, rank(n, ids)[0], "{n}");
        assert!(token > *old, "{n}: token {token} after {old}");
    }
    assert!(t0.elapsed() < STEP, "back after {:?}", t0.elapsed());
    idle(STEP * 3).await;
    let names = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(a.backend.running(), names(&for_a));
    assert_eq!(b.backend.running(), names(&for_b));
    for n in &for_b {
        assert_eq!(
            a.backend.starts_of(n).len(),
            1,
            "{n}: a did not start it again"
        );
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_console_disabled_anywhere_is_stopped_by_its_owner() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let a = member(&etcd, "replica-a", Fake::default(), &cancel);
    put(&a.store, "node-1").await;
    put(&a.store, "node-2").await;
    idle(Duration::from_millis(200)).await;
    assert_eq!(a.backend.running().len(), 2);

    // Another replica deletes the spec (its Disable, or an operator).
    let b = etcd.replica("replica-b");
    assert!(b.delete_spec(&node("node-1")).await.unwrap());
    idle(Duration::from_millis(200)).await;
    assert_eq!(a.backend.running(), BTreeSet::from(["node-2".to_owned()]));
    let info = a.manager.get(&node("node-1")).unwrap();
    assert_eq!(info.state, ConsoleState::Disabled);
    assert_eq!(etcd.owner(&node("node-1")), None, "claim released");
    assert_eq!(etcd.get(&KEYS.endpoint(&node("node-1"))), None);
    assert!(
        etcd.get(&KEYS.port(13000)).is_some(),
        "the port stays reserved"
    );
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn enable_returns_once_the_owner_publishes_the_endpoint() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let slow = Fake {
        delay: Duration::from_millis(700),
        ..Fake::default()
    };
    let a = member(&etcd, "replica-a", slow, &cancel);
    let t0 = Instant::now();
    let info = a.cluster.enable(spec("node-1")).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(info.state, ConsoleState::Running);
    assert_eq!(info.owner, "replica-a");
    assert_eq!(info.endpoint.unwrap().port, 13000);
    assert!(etcd.get(&KEYS.endpoint(&node("node-1"))).is_some());

    // The same spec again: the endpoint is there, no wait and no restart.
    let t0 = Instant::now();
    a.cluster.enable(spec("node-1")).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(50));
    assert_eq!(a.backend.starts_of("node-1").len(), 1);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn enable_gives_up_at_its_deadline_when_nobody_publishes() {
    let etcd = MemoryEtcd::new("13000:13020");
    let cancel = CancellationToken::new();
    let a = member(&etcd, "replica-a", Fake::default(), &cancel);
    a.store.pause();
    let t0 = Instant::now();
    let err = a.cluster.enable(spec("node-1")).await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, ConsoleError::Deadline(_)), "{err}");
    assert!(err.to_string().contains("within 3s"), "{err}");
    assert!(took >= ENABLE_TIMEOUT && took < ENABLE_TIMEOUT + Duration::from_millis(100));
    // The spec stays: it is served once a replica can.
    a.store.rejoin();
    let (owner, _) = owner_of(&etcd, "node-1").await;
    assert_eq!(owner, "replica-a");
    cancel.cancel();
}

/// The cluster's [`Consoles`](crate::consoles::Consoles) watch, on another
/// replica than the owner: a console enabled anywhere shows up STARTING
/// then RUNNING with the owner's endpoint; its spec deleted, DISABLED.
#[tokio::test(start_paused = true)]
async fn the_cluster_watch_follows_a_console_enabled_and_disabled_elsewhere() {
    use crate::consoles::{Change, Consoles};
    let etcd = MemoryEtcd::new("13200:13220");
    let cancel = CancellationToken::new();
    let a = member(&etcd, "replica-a", Fake::default(), &cancel);
    let b = member(&etcd, "replica-b", Fake::default(), &cancel);
    let mut watch = Consoles::watch(&b.cluster);
    assert!(watch.snapshot().is_empty());
    a.cluster.enable(spec("node-1")).await.unwrap();
    let mut seen = Vec::new();
    let running = loop {
        match tokio::time::timeout(ENABLE_TIMEOUT, watch.next())
            .await
            .unwrap()
        {
            Change::Console(info) if info.state == ConsoleState::Running => break info,
            Change::Console(info) => seen.push(info.state),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(running.node, node("node-1"));
    assert!(running.endpoint.is_some(), "{running:?}");
    assert!(
        seen.iter().all(|s| *s == ConsoleState::Starting),
        "{seen:?}"
    );
    Consoles::disable(&b.cluster, &node("node-1"))
        .await
        .unwrap();
    let disabled = loop {
        match tokio::time::timeout(ENABLE_TIMEOUT, watch.next())
            .await
            .unwrap()
        {
            Change::Console(info) if info.state == ConsoleState::Disabled => break info,
            Change::Console(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(disabled.node, node("node-1"));
    cancel.cancel();
    assert!(matches!(
        tokio::time::timeout(ENABLE_TIMEOUT, watch.next())
            .await
            .unwrap(),
        Change::Closed
    ));
}
