//! A replica's read model of the cluster: every key under the prefix,
//! mirrored in memory and kept current by one prefix watch (not a poll per
//! console). Get/List/Watch and placement read this mirror; Get and List
//! first make sure it has caught up with etcd's revision at the time of the
//! request ([`ClusterView::read`]), so they never lag behind a write.
//!
//! ```text
//!          ┌──────────────── error / closed stream ───────────────┐
//!          ▼                                                      │
//!  LIST (get --prefix @R) ──▶ WATCH from R+1 ──events──▶ apply, last = rev
//!          ▲                        │ canceled with compact_revision
//!          └──── re-list ◀──────────┘ (history is gone: start over)
//! ```
//!
//! etcd-client does not resume a watch stream; this loop re-creates it from
//! the last applied revision + 1 (on whichever member answers) and re-lists
//! only after a compaction, when that revision's history is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::failover::EtcdClient;
use crate::tasks::Tasks;

/// One key as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// What changed in the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key (relative to the prefix) was put or deleted.
    Key(String),
    /// The whole mirror was re-read; anything may have changed.
    Resynced,
}

#[derive(Default)]
struct Mirror {
    revision: i64,
    keys: BTreeMap<String, Entry>,
}

/// The mirror's read side; cheap to clone.
#[derive(Clone)]
pub struct ClusterView {
    client: EtcdClient,
    prefix: String,
    mirror: Arc<RwLock<Mirror>>,
    revision: watch::Receiver<i64>,
    changes: broadcast::Sender<Change>,
    /// The follower; stopped by `cancel`.
    tasks: Tasks,
}

/// How long [`ClusterView::read`] waits for the mirror to catch up before
/// it reads from etcd instead.
const CATCH_UP: Duration = Duration::from_millis(250);

impl ClusterView {
    /// Start mirroring `prefix` until `cancel` fires.
    pub fn start(client: EtcdClient, prefix: String, cancel: CancellationToken) -> Self {
        let mirror = Arc::new(RwLock::new(Mirror::default()));
        let (rev_tx, revision) = watch::channel(0);
        let changes = broadcast::channel(4096).0;
        let follower = Follower {
            client: client.clone(),
            prefix: prefix.clone(),
            mirror: mirror.clone(),
            revision: rev_tx,
            changes: changes.clone(),
        };
        let span = info_span!(parent: None, "cluster_view", %prefix);
        let tasks = Tasks::new(&cancel);
        let stop = tasks.token().clone();
        tasks.spawn(async move { follower.run(stop).await }.instrument(span));
        Self {
            client,
            prefix,
            mirror,
            revision,
            changes,
            tasks,
        }
    }

    /// Stop mirroring; wait (at most `bound`) for the follower to end.
    pub async fn stop(&self, bound: Duration) -> bool {
        self.tasks.stop(bound).await
    }

    /// Every key starting with `start` (relative) as of now, for answers
    /// that must not lag behind a write made through another replica.
    ///
    /// One small linearizable read tells etcd's current revision; when the
    /// mirror has caught up with it (at once, or within [`CATCH_UP`]) it
    /// answers, so a List of 1000 consoles costs etcd a one-key read rather
    /// than a read of 3000 keys (which a busy etcd took seconds to serve
    /// during a takeover). Otherwise the keys are read from etcd: the mirror
    /// learns revisions only from events under the prefix, so writes
    /// elsewhere in etcd leave it "behind" until our next own change.
    /// (Progress notifications would tell it, but an etcd without the fix
    /// for its issue #15220, the rig's 3.4.23 among them, can send one
    /// ahead of events not yet sent.)
    ///
    /// Several `starts` share one revision check (and, from the mirror, one
    /// snapshot).
    pub async fn read(&self, starts: &[&str]) -> Result<Vec<(String, Entry)>, etcd_client::Error> {
        let now = self.current_revision().await?;
        let caught_up = tokio::time::timeout(CATCH_UP, self.caught_up(now)).await;
        let mut keys = Vec::new();
        if caught_up.is_err() {
            debug!(now, "mirror behind etcd: reading from etcd");
            for start in starts {
                keys.extend(self.read_from_etcd(start).await?);
            }
            return Ok(keys);
        }
        let mirror = self.mirror.read().expect("mirror");
        for start in starts {
            keys.extend(range_of(&mirror, start));
        }
        Ok(keys)
    }

    /// etcd's revision now (linearizable): one key, keys only.
    async fn current_revision(&self) -> Result<i64, etcd_client::Error> {
        let resp = self
            .client
            .call(|c| {
                let key = self.prefix.clone();
                let one = GetOptions::new().with_keys_only();
                async move { c.kv_client().get(key, Some(one)).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// [`Self::read`] straight from etcd.
    async fn read_from_etcd(
        &self,
        start: &str,
    ) -> Result<Vec<(String, Entry)>, etcd_client::Error> {
        let key = format!("{}{start}", self.prefix);
        let resp = self.client.get_prefix(&key).await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                Some((key.strip_prefix(&self.prefix)?.to_owned(), entry(kv)))
            })
            .collect())
    }

    /// The key (relative to the prefix), if present.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.mirror.read().expect("mirror").keys.get(key).cloned()
    }

    /// Every key (relative to the prefix) starting with `start`.
    pub fn range(&self, start: &str) -> Vec<(String, Entry)> {
        range_of(&self.mirror.read().expect("mirror"), start)
    }

    /// The etcd revision the mirror reflects (0 before the first list).
    pub fn revision(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Wait until the mirror has caught up with `revision` (e.g. one a write returned).
    pub async fn caught_up(&self, revision: i64) {
        let mut rx = self.revision.clone();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }
}

struct Follower {
    client: EtcdClient,
    prefix: String,
    mirror: Arc<RwLock<Mirror>>,
    revision: watch::Sender<i64>,
    changes: broadcast::Sender<Change>,
}

/// Why a watch ended.
enum WatchEnd {
    /// Re-create it from the last revision + 1.
    Broken,
    /// History is compacted away: list again.
    Compacted,
}

impl Follower {
    async fn run(self, cancel: CancellationToken) {
        const MIN: Duration = Duration::from_millis(100);
        const MAX: Duration = Duration::from_secs(2);
        let mut relist = true;
        let mut pause = MIN;
        while !cancel.is_cancelled() {
            if relist {
                match self.list().await {
                    Ok(()) => relist = false,
                    Err(e) => warn!(error = %e, "listing the cluster state failed"),
                }
            }
            if !relist {
                let started = std::time::Instant::now();
                let ended = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ended = self.follow() => ended,
                };
                relist = matches!(ended, WatchEnd::Compacted);
                if started.elapsed() > Duration::from_secs(10) {
                    pause = MIN;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX);
        }
    }

    async fn list(&self) -> Result<(), etcd_client::Error> {
        let resp = self.client.get_prefix(&self.prefix).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let keys = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((self.relative(kv.key())?, entry(kv))))
            .collect();
        *self.mirror.write().expect("mirror") = Mirror { revision, keys };
        debug!(revision, "cluster state listed");
        self.revision.send_replace(revision);
        let _ = self.changes.send(Change::Resynced);
        Ok(())
    }

    /// Follow one watch stream until it breaks.
    async fn follow(&self) -> WatchEnd {
        let from = self.mirror.read().expect("mirror").revision + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let opened = self.client.call(|c| {
            let (prefix, options) = (self.prefix.clone(), options.clone());
            async move { c.watch_client().watch(prefix, Some(options)).await }
        });
        let mut stream = match opened.await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, from, "creating the cluster watch failed");
                return WatchEnd::Broken;
            }
        };
        loop {
            let message = stream.message().await;
            match message {
                Ok(Some(resp)) if resp.canceled() => {
                    let compacted = resp.compact_revision() > 0;
                    warn!(
                        compacted,
                        reason = resp.cancel_reason(),
                        "cluster watch canceled"
                    );
                    return match compacted {
                        true => WatchEnd::Compacted,
                        false => WatchEnd::Broken,
                    };
                }
                Ok(Some(resp)) => self.apply(&resp),
                Ok(None) => return WatchEnd::Broken,
                Err(e) => {
                    warn!(error = %e, "cluster watch stream failed");
                    return WatchEnd::Broken;
                }
            }
        }
    }

    fn apply(&self, resp: &etcd_client::WatchResponse) {
        let mut changed = Vec::new();
        let revision = {
            let mut mirror = self.mirror.write().expect("mirror");
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(key) = self.relative(kv.key()) else {
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => mirror.keys.insert(key.clone(), entry(kv)),
                    EventType::Delete => mirror.keys.remove(&key),
                };
                mirror.revision = mirror.revision.max(kv.mod_revision());
                changed.push(key);
            }
            // Progress notifications (no events) are not trusted to move the
            // revision: an etcd without the fix for its issue #15220 can send
            // one ahead of events still to be sent, and `read` relies on the
            // mirror holding every change up to its revision.
            mirror.revision
        };
        self.revision.send_replace(revision);
        for key in changed {
            let _ = self.changes.send(Change::Key(key));
        }
    }

    fn relative(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        Some(key.strip_prefix(&self.prefix)?.to_owned())
    }
}

/// Every key of `mirror` starting with `start`.
fn range_of(mirror: &Mirror, start: &str) -> Vec<(String, Entry)> {
    mirror
        .keys
        .range(start.to_owned()..)
        .take_while(|(k, _)| k.starts_with(start))
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect()
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}
