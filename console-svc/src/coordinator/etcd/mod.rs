//! The etcd coordinator: one lease per replica, one owner key per console.
//!
//! Keys, under the configured prefix (built and parsed in [`keys`] only):
//!
//! - `members/<replica>`: this replica's advertise host and gRPC address,
//!   bound to its lease (it vanishes when the replica dies).
//! - `consoles/<node>/owner`: the owning replica's id, created only if
//!   absent and bound to the owner's lease. Its create revision is the
//!   fencing token: a later owner always has a larger one, and every check
//!   compares it in the same transaction.
//!
//! - `consoles/<node>/spec`: the desired state, passwords sealed
//!   ([`specs`], [`spec_doc`]); written by whichever replica got the request.
//! - `ports/<port>`: the node a console port belongs to, cluster-wide, written
//!   in the same transaction as the spec.
//!
//! The lease lifecycle (and self-fencing) lives in [`lease`]; this file is
//! the etcd side of it and the ownership transactions.

pub mod failover;
pub mod keys;
pub mod lease;
pub mod spec_doc;
pub mod specs;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::failover::EtcdClient;
pub use self::keys::Keys;
use self::lease::{LeaseApi, LeaseTiming, OnGrant, Renewer};
use super::gate::{LeaseGate, LeaseState};
use super::{CoordError, Coordinator, Ownership};
use crate::spec::NodeId;
use crate::tasks::Tasks;

/// What other replicas (and operators) learn about a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub replica: String,
    /// The host console URLs name on this replica.
    pub host: String,
    /// This replica's gRPC address.
    pub grpc: String,
}

#[derive(Clone, Debug)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub connect_timeout: Duration,
}

pub struct EtcdCoordinator {
    member: Member,
    keys: Keys,
    client: EtcdClient,
    lease: watch::Receiver<Option<i64>>,
    /// The lease with its fence deadline, for the BMC gate.
    valid: watch::Receiver<Option<LeaseState>>,
    serving: watch::Receiver<bool>,
    /// The lease keeper and the serving follower; stopped by `cancel`.
    tasks: Tasks,
}

impl EtcdCoordinator {
    /// Connect and start keeping a lease; serving begins once it is granted.
    /// The lease is revoked when `cancel` fires ([`Self::stop`] waits for it).
    pub async fn start(
        settings: EtcdSettings,
        member: Member,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, CoordError> {
        let client = connect(&settings).await?;
        let keys = Keys::new(&settings.prefix);
        let (lease_tx, lease) = watch::channel(None);
        let (valid_tx, valid) = watch::channel(None);
        let (serving_tx, serving) = watch::channel(false);
        let etcd = EtcdLeases {
            client: client.clone(),
        };
        let register = Register {
            client: client.clone(),
            key: keys.member(&member.replica),
            value: serde_json::to_string(&member).expect("member serializes"),
        };
        let timing = LeaseTiming::for_ttl(settings.lease_ttl);
        let tasks = Tasks::new(&cancel);
        let stop = tasks.token().clone();
        tasks.spawn(async move {
            lease::keep(&etcd, &register, timing, lease_tx, valid_tx, stop).await;
        });
        tasks.spawn(follow_lease(lease.clone(), serving_tx));
        Ok(Arc::new(Self {
            member,
            keys,
            client,
            lease,
            valid,
            serving,
            tasks,
        }))
    }

    /// Stop keeping the lease and wait (at most `bound`) until it is revoked
    /// (the revoke itself gives up after [`lease::REVOKE_TIMEOUT`]: an
    /// unreachable etcd lets the lease expire by its TTL). False if the
    /// keeper had not ended by then.
    pub async fn stop(&self, bound: Duration) -> bool {
        self.tasks.stop(bound).await
    }

    /// The desired-state store on this coordinator's etcd connection.
    pub fn spec_store(
        &self,
        sealer: crate::seal::Sealer,
        range: crate::ports::PortRange,
    ) -> specs::SpecStore {
        specs::SpecStore::new(self.client.clone(), self.keys.prefix(), sealer, range)
    }

    /// Mirror everything under the prefix (see [`view`]) until `cancel`.
    pub fn view(&self, cancel: CancellationToken) -> view::ClusterView {
        view::ClusterView::start(self.client.clone(), self.keys.prefix().to_owned(), cancel)
    }

    fn current_lease(&self) -> Result<i64, CoordError> {
        self.lease
            .borrow()
            .ok_or_else(|| CoordError::NotServing("no etcd lease (etcd unreachable?)".into()))
    }
}

#[async_trait]
impl Coordinator for EtcdCoordinator {
    fn replica_id(&self) -> &str {
        &self.member.replica
    }

    fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }

    async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError> {
        let lease = self.current_lease()?;
        let key = self.keys.owner(node);
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key.clone(), self.member.replica.clone(), Some(put)),
                TxnOp::get(key.clone(), None),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(txn).await?;
        let (owner, token, owner_lease) = owner_of(&resp.op_responses())
            .ok_or_else(|| CoordError::Etcd(format!("{key} vanished during its claim")))?;
        let won = owner == self.member.replica && owner_lease == lease;
        crate::metrics::get().claim(won);
        if won {
            Ok(Ownership {
                node: node.clone(),
                token,
                lease,
            })
        } else {
            Err(CoordError::Fenced {
                node: node.to_string(),
                owner,
            })
        }
    }

    async fn check(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let lease = self.current_lease()?;
        let key = self.keys.owner(&ownership.node);
        let resp = self
            .client
            .call(|c| {
                let key = key.clone();
                async move { c.kv_client().get(key, None).await }
            })
            .await
            .map_err(etcd_err)?;
        match resp.kvs().first() {
            Some(kv)
                if kv.create_revision() == ownership.token
                    && kv.lease() == lease
                    && lease == ownership.lease =>
            {
                Ok(())
            }
            Some(kv) => Err(CoordError::Fenced {
                node: ownership.node.to_string(),
                owner: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            None => Err(CoordError::Fenced {
                node: ownership.node.to_string(),
                owner: "nobody (the claim is gone)".into(),
            }),
        }
    }

    fn gate(&self) -> LeaseGate {
        LeaseGate::following(self.valid.clone())
    }

    async fn release(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let key = self.keys.owner(&ownership.node);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                ownership.token,
            )])
            .and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(self.keys.endpoint(&ownership.node), None),
            ]);
        self.txn(txn).await?;
        Ok(())
    }
}

/// Turn the lease into the serving signal. A watch shows only the latest
/// value, so a lost lease and its successor (`Some(a)` → `None` → `Some(b)`)
/// can arrive as one change: any change away from a held lease is first
/// reported as `false`, so the manager fences (and then resumes) even then.
async fn follow_lease(mut lease: watch::Receiver<Option<i64>>, serving: watch::Sender<bool>) {
    let mut held = None;
    loop {
        let now = *lease.borrow_and_update();
        if held.is_some() && now != held {
            serving.send_if_modified(|s| std::mem::replace(s, false));
        }
        let on = now.is_some();
        serving.send_if_modified(|s| std::mem::replace(s, on) != on);
        held = now;
        if lease.changed().await.is_err() {
            serving.send_replace(false);
            return;
        }
    }
}

/// The value of `consoles/<node>/failure`: why the last claim of a console
/// could not start it (e.g. its kept port is in use on that replica), bound
/// to the claimer's lease, so Enable and Get can say why nobody serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDoc {
    pub replica: String,
    pub error: String,
    /// The spec revision the start was tried with (older ones are stale).
    pub spec_revision: i64,
}

/// The value of `consoles/<node>/endpoint`: where the owner serves a console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDoc {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub replica: String,
    /// `running` or `failed` (the port is open in both).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl EtcdCoordinator {
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Write (or, with `None`, delete) a node's endpoint, bound to our lease,
    /// only while the owner key is still the claim `token`. False when fenced.
    pub async fn publish_endpoint(
        &self,
        node: &NodeId,
        token: i64,
        doc: Option<&EndpointDoc>,
    ) -> Result<bool, CoordError> {
        let lease = self.current_lease()?;
        let key = self.keys.endpoint(node);
        let op = match doc {
            Some(doc) => TxnOp::put(
                key,
                serde_json::to_string(doc).expect("endpoint serializes"),
                Some(PutOptions::new().with_lease(lease)),
            ),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.owner(node), CompareOp::Equal, token),
                Compare::lease(self.keys.owner(node), CompareOp::Equal, lease),
            ])
            .and_then([op]);
        let resp = self.txn(txn).await?;
        Ok(resp.succeeded())
    }

    /// Record (or, with `None`, clear) why this replica could not start
    /// `node`'s console, bound to its lease.
    pub async fn note_failure(
        &self,
        node: &NodeId,
        doc: Option<&FailureDoc>,
    ) -> Result<(), CoordError> {
        let lease = self.current_lease()?;
        let key = self.keys.failure(node);
        let op = match doc {
            Some(doc) => TxnOp::put(
                key,
                serde_json::to_string(doc).expect("failure serializes"),
                Some(PutOptions::new().with_lease(lease)),
            ),
            None => TxnOp::delete(key, None),
        };
        self.txn(Txn::new().and_then([op])).await?;
        Ok(())
    }

    /// Stop taking consoles: remove `members/<replica>` so placement ranks
    /// the others first (the lease, and what it owns, stays).
    pub async fn leave(&self) -> Result<(), CoordError> {
        let key = self.keys.member(&self.member.replica);
        self.client
            .call(|c| {
                let key = key.clone();
                async move { c.kv_client().delete(key, None).await }
            })
            .await
            .map_err(etcd_err)?;
        Ok(())
    }

    /// One transaction, failing over between members (every transaction
    /// here is guarded by compares, so a retry of one that landed is safe).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, CoordError> {
        self.client
            .call(|c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await
            .map_err(etcd_err)
    }
}

/// Clients for the configured members. Requests need a leader (a member
/// that has none answers at once instead of queueing, and we try another).
/// One request may take up to a TTL (a busy etcd answering a large read
/// during a takeover storm needs it); a member that hangs is left sooner by
/// the lease keeper (see `lease::LeaseTiming::answer_within`), which moves
/// every later call on; failover gives up after a TTL.
async fn connect(settings: &EtcdSettings) -> Result<EtcdClient, CoordError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        .with_timeout(settings.lease_ttl)
        .with_require_leader(true);
    EtcdClient::connect(&settings.endpoints, options, settings.lease_ttl)
        .await
        .map_err(etcd_err)
}

/// Owner id, create revision and lease of the owner key, from a claim's
/// last Get.
fn owner_of(ops: &[TxnOpResponse]) -> Option<(String, i64, i64)> {
    ops.iter().rev().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
                kv.lease(),
            )
        }),
        _ => None,
    })
}

fn etcd_err(e: etcd_client::Error) -> CoordError {
    CoordError::Etcd(e.to_string())
}

/// [`LeaseApi`] on a real etcd.
struct EtcdLeases {
    client: EtcdClient,
}

#[async_trait]
impl LeaseApi for EtcdLeases {
    async fn grant(&self, ttl: Duration) -> Result<i64, CoordError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .call(|c| async move { c.lease_client().grant(secs, None).await })
            .await
            .map_err(etcd_err)?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<Box<dyn Renewer>, CoordError> {
        let opened = self
            .client
            .call(|c| async move { c.lease_client().keep_alive(lease).await })
            .await;
        match opened {
            Ok((keeper, stream)) => Ok(Box::new(EtcdRenewer {
                keeper,
                stream,
                // `call` has just made the member that answered preferred.
                member: self.client.preferred(),
                client: self.client.clone(),
            })),
            // etcd-client's own check of the first answer: TTL <= 0.
            Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => {
                Ok(Box::new(GoneLease))
            }
            Err(e) => Err(etcd_err(e)),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), CoordError> {
        self.client
            .call(|c| async move { c.lease_client().revoke(lease).await })
            .await
            .map_err(etcd_err)?;
        Ok(())
    }

    fn can_fail_over(&self) -> bool {
        self.client.endpoints().count() > 1
    }
}

struct EtcdRenewer {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
    /// The member the stream runs on, and the client to tell if it hangs.
    member: usize,
    client: EtcdClient,
}

#[async_trait]
impl Renewer for EtcdRenewer {
    async fn renew(&mut self) -> Result<Duration, CoordError> {
        self.keeper.keep_alive().await.map_err(etcd_err)?;
        match self.stream.message().await.map_err(etcd_err)? {
            Some(resp) => Ok(Duration::from_secs(resp.ttl().max(0) as u64)),
            // etcd-client does not resume a closed stream; the keeper opens
            // a new one (the lease itself may well be valid).
            None => Err(CoordError::Etcd("keep-alive stream closed".into())),
        }
    }

    fn abandon(&mut self) {
        self.client.avoid(self.member);
    }
}

/// What a keep-alive on a lease etcd no longer has answers: TTL 0.
struct GoneLease;

#[async_trait]
impl Renewer for GoneLease {
    async fn renew(&mut self) -> Result<Duration, CoordError> {
        Ok(Duration::ZERO)
    }
}

/// Registers `members/<replica>` under each new lease.
struct Register {
    client: EtcdClient,
    key: String,
    value: String,
}

#[async_trait]
impl OnGrant for Register {
    async fn granted(&self, lease: i64) -> Result<(), CoordError> {
        self.client
            .call(|c| async move {
                let put = PutOptions::new().with_lease(lease);
                c.kv_client()
                    .put(self.key.clone(), self.value.clone(), Some(put))
                    .await
            })
            .await
            .map_err(etcd_err)?;
        Ok(())
    }
}
