//! Who claims an unowned console, and when.
//!
//! Rendezvous hashing ranks the live members (`members/*`) per node; rank r
//! claims after r × `claim_step`, so the best-placed replica goes first and
//! the others only step in when it does not (no stampede). Owned consoles
//! never move (sticky); a dead owner's keys vanish with its lease, and the
//! survivors rank again.
//!
//! ```text
//!  view change ─▶ for each node:
//!    spec, unowned, rank r ──after r × step, still unowned──▶ manager.enable(spec)
//!      (its port chosen by the service and busy here ───────▶ move the spec to the next
//!       free port this replica can bind, claim that one)
//!    spec changed, owned by us ─────────────────────────────▶ manager.enable(spec) (restart)
//!    no spec, running here ─────────────────────────────────▶ manager.disable(node)
//!  a claim that did not start ─▶ consoles/<node>/failure (why; cleared by a start)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::api::RELATIVE;
use super::store::ClusterStore;
use super::Cluster;
use crate::coordinator::etcd::spec_doc::SpecTimes;
use crate::coordinator::etcd::specs::StoredSpec;
use crate::coordinator::etcd::FailureDoc;
use crate::manager::ConsoleState;
use crate::spec::NodeId;

/// The replicas in the order they should claim `node` (best first).
pub fn rank<'a>(node: &str, members: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = members.into_iter().map(|m| (score(node, m), m)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// FNV-1a of `node \0 replica`, mixed: stable across builds and processes.
fn score(node: &str, replica: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0]).chain(replica.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finish, so near-identical names spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Place on `cluster`'s tasks until they stop.
pub(super) fn spawn(cluster: Cluster) {
    let span = info_span!(parent: None, "placement", replica = cluster.replica());
    let tasks = &cluster.inner.tasks;
    let (tasks, cancel) = (tasks.clone(), tasks.token().clone());
    tasks.spawn(async move { Placer::new(cluster).run(cancel).await }.instrument(span));
}

struct Placer {
    cluster: Cluster,
    /// When we mean to claim each unowned node.
    due: HashMap<NodeId, Instant>,
    /// The spec revision each console we run was started from.
    started: HashMap<NodeId, i64>,
    /// Our last claim of each node and the pause before the next one, so a
    /// console that keeps failing to start here is not claimed in a loop.
    claims: HashMap<NodeId, (Instant, Duration)>,
    /// Console starts in flight at once (see [`STARTS_AT_ONCE`]).
    starts: Arc<Semaphore>,
    /// Nodes last seen owned by another replica: claiming one is a takeover.
    owned_elsewhere: HashSet<NodeId>,
}

/// How long placement lets changes pile up before it looks again.
const COALESCE: Duration = Duration::from_millis(20);
const CLAIM_RETRY_MIN: Duration = Duration::from_secs(1);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(30);
/// A takeover claims hundreds of consoles at once; each start is a few etcd
/// writes. Unbounded, they arrive together, and etcd answers lease
/// keep-alives only once it has applied everything committed before them:
/// survivors missed their own renewals and fenced, and the takeover
/// cascaded. Bounded, keep-alives wait behind a few dozen writes at most.
const STARTS_AT_ONCE: usize = 16;

impl Placer {
    fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            due: HashMap::new(),
            started: HashMap::new(),
            claims: HashMap::new(),
            starts: Arc::new(Semaphore::new(STARTS_AT_ONCE)),
            owned_elsewhere: HashSet::new(),
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut changes = self.cluster.inner.store.subscribe();
        let mut serving = self.cluster.inner.store.serving();
        loop {
            let taking = self.pass().await;
            // Not taking: pending claims wait for serving to return (waking
            // for a due time already past would spin this loop).
            let next = taking.then(|| self.due.values().min().copied()).flatten();
            let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.recv() => {
                    // Coalesce a burst (a takeover, many enables) into one pass.
                    tokio::time::sleep(COALESCE).await;
                    while !matches!(changes.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
                }
                _ = serving.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// One look at the whole cluster state; true when this replica may
    /// claim consoles.
    async fn pass(&mut self) -> bool {
        let inner = &self.cluster.inner;
        let taking = !inner.taking.is_cancelled() && *inner.store.serving().borrow();
        let state = super::api::snapshot(&self.cluster);
        let members: Vec<&str> = state.members.iter().map(String::as_str).collect();
        let me = self.cluster.replica().to_owned();
        let mut wanted = HashSet::new();
        for (node, view) in &state.nodes {
            let Some(Ok(spec)) = &view.spec else { continue };
            wanted.insert(node.clone());
            match &view.owner {
                Some(owner) if owner.replica == me => self.follow_spec(node, spec).await,
                Some(_) => {
                    self.due.remove(node);
                    self.owned_elsewhere.insert(node.clone());
                }
                None if taking => {
                    self.maybe_claim(node, spec, view.times, &members, &me)
                        .await
                }
                None => {}
            }
        }
        self.due.retain(|n, _| wanted.contains(n));
        self.claims.retain(|n, _| wanted.contains(n));
        self.owned_elsewhere.retain(|n| wanted.contains(n));
        let opened = &self.cluster.inner.opened;
        opened
            .lock()
            .expect("spec cache")
            .retain(|n, _| wanted.contains(n));
        self.drop_unwanted(&wanted).await;
        taking
    }

    async fn maybe_claim(
        &mut self,
        node: &NodeId,
        spec: &StoredSpec,
        times: Option<SpecTimes>,
        members: &[&str],
        me: &str,
    ) {
        let ranked = rank(node.as_str(), members.iter().copied());
        // Not a member (yet, or drained): claim last.
        let r = ranked.iter().position(|m| *m == me).unwrap_or(ranked.len());
        let step = self.cluster.inner.settings.claim_step;
        let due = *self
            .due
            .entry(node.clone())
            .or_insert_with(|| Instant::now() + step * r as u32);
        let now = Instant::now();
        if now < due {
            return;
        }
        if let Some((last, pause)) = self.claims.get(node).copied() {
            if now < last + pause {
                self.due.insert(node.clone(), last + pause);
                return;
            }
        }
        self.due.remove(node);
        self.note_claim(node, now);
        if spec.port_auto && !self.cluster.inner.manager.port_bindable(spec.port) {
            if self.move_port(node, spec, times).await {
                // Claim the moved spec as soon as it is seen, not after the
                // pause between claims: we are still the best placed.
                self.claims.remove(node);
            }
            return;
        }
        debug!(%node, rank = r, "claiming");
        self.start(node, spec).await;
    }

    /// The port the service chose for `node` is busy on this replica's
    /// address (another program listens on it, or a connection in
    /// TIME_WAIT holds it): move the spec to the next free port this
    /// replica can bind, as Ironic's `acquire_port` moves on; the new spec
    /// is claimed like any other. A kept or explicit port is never moved
    /// (its start fails and says the port is in use). One etcd
    /// transaction, awaited (no BMC is touched); true when it moved.
    async fn move_port(&self, node: &NodeId, spec: &StoredSpec, times: Option<SpecTimes>) -> bool {
        let manager = self.cluster.inner.manager.clone();
        let usable = move |p| manager.port_bindable(p);
        let times = times.unwrap_or_else(|| SpecTimes::new_at(std::time::SystemTime::now()));
        let moved = self.cluster.inner.store.move_port(spec, times, &usable);
        match moved.await {
            Ok(Some(moved)) => {
                info!(
                    %node,
                    busy = spec.port,
                    port = moved.port,
                    "console port in use by another program; moved to the next free one"
                );
                true
            }
            Ok(None) => {
                debug!(%node, "spec changed while moving its busy port; looking again");
                true
            }
            Err(e) => {
                warn!(%node, busy = spec.port, error = %e, "console not started here: its port is in use");
                let why = format!("port {} is in use here and {e}", spec.port);
                note_failure(
                    &*self.cluster.inner.store,
                    node,
                    spec.mod_revision,
                    Some(why),
                )
                .await;
                false
            }
        }
    }

    /// Claims close together double the pause (a console that will not
    /// start here); a claim long after the last one starts over.
    fn note_claim(&mut self, node: &NodeId, now: Instant) {
        let pause = match self.claims.get(node) {
            Some((last, pause)) if now < *last + *pause * 4 => (*pause * 2).min(CLAIM_RETRY_MAX),
            _ => CLAIM_RETRY_MIN,
        };
        self.claims.insert(node.clone(), (now, pause));
    }

    /// A console we own whose spec changed is restarted with the new one.
    async fn follow_spec(&mut self, node: &NodeId, spec: &StoredSpec) {
        self.due.remove(node);
        if self.started.get(node) == Some(&spec.mod_revision) {
            return;
        }
        self.start(node, spec).await;
    }

    async fn start(&mut self, node: &NodeId, spec: &StoredSpec) {
        self.started.insert(node.clone(), spec.mod_revision);
        let manager = self.cluster.inner.manager.clone();
        let store = self.cluster.inner.store.clone();
        let revision = spec.mod_revision;
        let spec = spec.spec.clone();
        let node = node.clone();
        let starts = self.starts.clone();
        let takeover = self.owned_elsewhere.remove(&node);
        // Starting touches the BMC; never hold up placement of other nodes.
        let span = info_span!("claim", %node);
        self.cluster.inner.tasks.spawn(
            async move {
                let _turn = starts.acquire_owned().await;
                let started = manager.enable(spec).await;
                match &started {
                    Ok(_) if takeover => {
                        crate::metrics::get().takeover();
                        info!("console taken over here")
                    }
                    Ok(_) => info!("console started here"),
                    Err(e) => warn!(error = %e, "console not started here"),
                }
                let error = started.err().map(|e| e.to_string());
                note_failure(&*store, &node, revision, error).await;
            }
            .instrument(span),
        );
    }

    /// Consoles running here without a spec (disabled anywhere) are stopped.
    async fn drop_unwanted(&mut self, wanted: &HashSet<NodeId>) {
        let manager = self.cluster.inner.manager.clone();
        for info in manager.list() {
            if wanted.contains(&info.node) || info.state == ConsoleState::Disabled {
                continue;
            }
            self.started.remove(&info.node);
            if let Err(e) = manager.disable(&info.node).await {
                warn!(node = %info.node, error = %e, "could not stop a disabled console");
            }
        }
    }
}

/// Record why this replica's claim of `node` (spec `revision`) did not
/// start it, so Enable and Get can say so; a later start clears it. Best
/// effort: placement goes on either way.
async fn note_failure(
    store: &dyn ClusterStore,
    node: &NodeId,
    revision: i64,
    error: Option<String>,
) {
    let doc = error.map(|error| FailureDoc {
        replica: store.replica().to_owned(),
        error,
        spec_revision: revision,
    });
    if doc.is_none() && store.get(&RELATIVE.failure(node)).is_none() {
        return;
    }
    if let Err(e) = store.note_failure(node, doc.as_ref()).await {
        debug!(%node, error = %e, "could not record the start's outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_stable_and_spreads_nodes() {
        let members = ["replica-a", "replica-b", "replica-c"];
        let first = rank("node-1", members);
        assert_eq!(first.len(), 3);
        assert_eq!(first, rank("node-1", members.iter().rev().copied()));
        let mut firsts = HashMap::new();
        for i in 0..300 {
            let best = rank(&format!("node-{i}"), members)[0];
            *firsts.entry(best).or_insert(0) += 1;
        }
        for m in members {
            assert!(firsts[m] > 60, "{m} first for {} of 300 nodes", firsts[m]);
        }
    }

    #[test]
    fn losing_a_member_keeps_the_others_order() {
        let all = rank("node-7", ["a", "b", "c", "d"]);
        let without: Vec<&str> = all.iter().copied().filter(|m| *m != all[0]).collect();
        assert_eq!(rank("node-7", without.iter().copied()), without);
    }
}
