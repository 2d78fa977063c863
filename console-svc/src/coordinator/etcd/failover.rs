//! The etcd connection: one client per configured member, and failover
//! between them. Every etcd call in this crate goes through [`EtcdClient`].
//!
//! etcd-client's own balanced channel (`Client::connect(all endpoints)`)
//! keeps routing requests to a member that has died ("tcp connect error"),
//! so a replica with 2 of 3 members up could neither join, read nor publish.
//! Here each member gets its own (lazily connected) client; a call that fails
//! for a reason another member might not have (see [`worth_another_member`]:
//! the member is down, or answers UNAVAILABLE: no leader, leader changed,
//! shutting down) is tried on the next member, round after round with a short
//! pause, until `give_up_after` has passed. The member that answered last is
//! tried first next time, so a healthy cluster costs one round trip.
//!
//! ```text
//!   call ─▶ preferred member ──ok──▶ answer (that member stays preferred)
//!              │ unavailable
//!              ▼
//!           next member … (all tried) ─▶ pause ─▶ again, until give_up_after
//!                                                      └──▶ the last error
//! ```
//!
//! Retrying is safe for what we send: claims and endpoint writes are
//! transactions guarded by compares (a retry of one that did land sees its
//! own result), puts and deletes are idempotent. Streams (watch, keep-alive)
//! are opened through [`EtcdClient::call`] too; when one breaks, its owner
//! opens a new one and thereby lands on a live member.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse};
use tokio::time::Instant;
use tracing::debug;

/// How long to wait between rounds over every member.
const PAUSE: Duration = Duration::from_millis(100);

/// Clients for every member of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<(String, Client)>,
    /// Index into `members` of the one that answered last.
    preferred: AtomicUsize,
    give_up_after: Duration,
}

impl EtcdClient {
    /// One client per endpoint. Nothing is dialled yet: a member that is
    /// down now is simply skipped by calls until it is back.
    pub async fn connect(
        endpoints: &[String],
        options: ConnectOptions,
        give_up_after: Duration,
    ) -> Result<Self, etcd_client::Error> {
        if endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoints".into()));
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let client = Client::connect([endpoint], Some(options.clone())).await?;
            members.push((endpoint.clone(), client));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                preferred: AtomicUsize::new(0),
                give_up_after,
            }),
        })
    }

    /// Run `op` on the preferred member, failing over to the others while
    /// the error is one another member might not have.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.give_up_after;
        let n = inner.members.len();
        loop {
            let first = inner.preferred.load(Ordering::Relaxed);
            let mut last_error = None;
            for i in (0..n).map(|k| (first + k) % n) {
                let (endpoint, client) = &inner.members[i];
                match op(client.clone()).await {
                    Ok(answer) => {
                        inner.preferred.store(i, Ordering::Relaxed);
                        return Ok(answer);
                    }
                    Err(e) if worth_another_member(&e) => {
                        debug!(%endpoint, error = %e, "etcd member unavailable; trying the next");
                        crate::metrics::get().etcd_error(true);
                        last_error = Some(e);
                    }
                    Err(e) => {
                        crate::metrics::get().etcd_error(false);
                        return Err(e);
                    }
                }
            }
            let e = last_error.expect("at least one member was tried");
            if Instant::now() + PAUSE >= deadline {
                crate::metrics::get().etcd_error(false);
                return Err(e);
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Every key starting with `prefix` (linearizable), failing over.
    pub async fn get_prefix(&self, prefix: &str) -> Result<GetResponse, etcd_client::Error> {
        self.call(|c| async move {
            let all = GetOptions::new().with_prefix();
            c.kv_client().get(prefix, Some(all)).await
        })
        .await
    }

    /// The member the next call starts with (index into [`Self::endpoints`]).
    pub fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed)
    }

    /// `member` stopped answering (a stream on it hangs): unless another
    /// member has answered since, the next call starts with the one after it.
    pub fn avoid(&self, member: usize) {
        let next = (member + 1) % self.inner.members.len();
        let _ = self.inner.preferred.compare_exchange(
            member,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The endpoints, in configuration order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.members.iter().map(|(e, _)| e.as_str())
    }
}

/// Whether `e` says "not this member, not now" rather than "no".
///
/// Connection failures surface as transport errors or as UNAVAILABLE; etcd
/// answers UNAVAILABLE for "no leader", "leader changed", "request timed
/// out" and while stopping; our own per-request timeout is
/// DEADLINE_EXCEEDED or tonic's CANCELLED "Timeout expired"; a member that is
/// being killed may reset the stream (UNKNOWN/CANCELLED "transport error",
/// "h2 protocol error").
pub fn worth_another_member(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded => true,
            Code::Unknown | Code::Cancelled => {
                let m = s.message();
                m.contains("transport")
                    || m.contains("h2 protocol")
                    || m.contains("connection")
                    || m.contains("Timeout expired")
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn unavailable() -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"))
    }

    async fn three(give_up_after: Duration) -> EtcdClient {
        let eps: Vec<String> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        EtcdClient::connect(&eps, ConnectOptions::new(), give_up_after)
            .await
            .expect("lazy clients")
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_members_are_skipped_and_the_one_that_answers_is_preferred() {
        let etcd = three(Duration::from_secs(1)).await;
        let calls = AtomicU32::new(0);
        // Only the third member "answers": the call fails over to it.
        let answer = etcd
            .call(|_| {
                let k = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k < 2 {
                        Err(unavailable())
                    } else {
                        Ok(k)
                    }
                }
            })
            .await
            .expect("third member answers");
        assert_eq!(answer, 2);
        // The next call starts there.
        let answer = etcd
            .call(|_| {
                let k = calls.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, etcd_client::Error>(k) }
            })
            .await
            .unwrap();
        assert_eq!(answer, 3, "one call, no failover");
        assert_eq!(etcd.inner.preferred.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_real_refusal_is_not_retried() {
        let etcd = three(Duration::from_secs(1)).await;
        let calls = AtomicU32::new(0);
        let e = etcd
            .call(|_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(etcd_client::Error::GRpcStatus(
                        tonic::Status::invalid_argument("etcdserver: key is not provided"),
                    ))
                }
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("key is not provided"), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_repeat_until_the_deadline_then_the_last_error_is_returned() {
        let etcd = three(Duration::from_secs(1)).await;
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let e = etcd
            .call(|_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(unavailable()) }
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no leader"), "{e}");
        let rounds = calls.load(Ordering::SeqCst) / 3;
        assert!((9..=11).contains(&rounds), "{rounds} rounds of 3 members");
        assert!(started.elapsed() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_comes_back_during_the_retries_answers() {
        let etcd = three(Duration::from_secs(5)).await;
        let calls = AtomicU32::new(0);
        let answer = etcd
            .call(|_| {
                let k = calls.fetch_add(1, Ordering::SeqCst);
                // An election: nobody answers for the first 10 rounds.
                async move {
                    if k < 30 {
                        Err(unavailable())
                    } else {
                        Ok(k)
                    }
                }
            })
            .await
            .expect("answered after the election");
        assert_eq!(answer, 30);
    }

    #[tokio::test]
    async fn avoiding_a_member_moves_on_unless_another_answered_since() {
        let etcd = three(Duration::from_secs(1)).await;
        assert_eq!(etcd.preferred(), 0);
        etcd.avoid(0);
        assert_eq!(etcd.preferred(), 1);
        etcd.avoid(0);
        assert_eq!(etcd.preferred(), 1, "member 1 is not the one that hung");
        etcd.avoid(1);
        etcd.avoid(2);
        assert_eq!(etcd.preferred(), 0, "wraps around");
    }

    #[test]
    fn which_errors_fail_over() {
        use tonic::Status;
        let grpc = etcd_client::Error::GRpcStatus;
        assert!(worth_another_member(&grpc(Status::unavailable(
            "tcp connect error"
        ))));
        assert!(worth_another_member(&grpc(Status::deadline_exceeded(
            "timeout"
        ))));
        assert!(worth_another_member(&grpc(Status::unknown(
            "transport error"
        ))));
        assert!(worth_another_member(&grpc(Status::cancelled(
            "Timeout expired"
        ))));
        assert!(!worth_another_member(&grpc(Status::unknown(
            "some other failure"
        ))));
        assert!(!worth_another_member(&grpc(Status::failed_precondition(
            "etcdserver: requested lease not found"
        ))));
        assert!(!worth_another_member(&grpc(Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted"
        ))));
    }
}
