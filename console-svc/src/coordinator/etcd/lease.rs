//! This replica's etcd lease: granted, kept alive, and given up *before* it
//! could expire at the server, so a replica that cannot reach etcd stops
//! serving before any other replica may take its consoles.
//!
//! ```text
//!          grant ok                      renew ok (deadline moves on)
//!  joining ────────▶ serving(lease) ◀──────────────┐
//!     ▲                  │ renew failed, stream closed, or no answer by
//!     │ backoff          │ the fence deadline (= expiry - fence_margin)
//!     └──── fenced ◀─────┘  (publishes None: the manager stops every console)
//! ```
//!
//! Expiry is measured from the moment a keep-alive was *sent*: the server
//! renewed no earlier than that, so it cannot expire the lease before
//! `sent + ttl`. The loop publishes the current lease on a watch channel;
//! `None` means "do not serve". Behind [`LeaseApi`] so the timing is tested
//! on tokio's paused clock.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::coordinator::CoordError;

/// The lease calls the keeper needs.
#[async_trait]
pub trait LeaseApi: Send + Sync + 'static {
    /// A new lease; its id.
    async fn grant(&self, ttl: Duration) -> Result<i64, CoordError>;
    /// Open the keep-alive stream for `lease`.
    async fn keep_alive(&self, lease: i64) -> Result<Box<dyn Renewer>, CoordError>;
    async fn revoke(&self, lease: i64) -> Result<(), CoordError>;
}

/// One lease's keep-alive stream.
#[async_trait]
pub trait Renewer: Send {
    /// One round trip: the TTL the server now gives the lease (zero: gone).
    async fn renew(&mut self) -> Result<Duration, CoordError>;
}

/// What to do once a lease is granted (register this replica), before it
/// is published as serving.
#[async_trait]
pub trait OnGrant: Send + Sync + 'static {
    async fn granted(&self, lease: i64) -> Result<(), CoordError>;
}

#[derive(Clone, Debug)]
pub struct LeaseTiming {
    pub ttl: Duration,
    /// Renew this often (a third of the TTL by default).
    pub renew_every: Duration,
    /// Stop serving this long before the lease could expire: the time the
    /// manager needs to close listeners and end SOL sessions.
    pub fence_margin: Duration,
}

impl LeaseTiming {
    pub fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: ttl / 3,
            fence_margin: (ttl / 4).max(Duration::from_millis(500)).min(ttl / 2),
        }
    }
}

/// Keep a lease until `cancel`; publish it on `current` (None when fenced).
/// On cancel the lease is revoked, so every key bound to it goes at once.
pub async fn keep(
    api: &dyn LeaseApi,
    on_grant: &dyn OnGrant,
    timing: LeaseTiming,
    current: watch::Sender<Option<i64>>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    while !cancel.is_cancelled() {
        let joined = tokio::select! {
            _ = cancel.cancelled() => break,
            r = join(api, on_grant, &timing) => r,
        };
        let (lease, renewer, expires) = match joined {
            Ok(j) => j,
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "cannot join through etcd");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        backoff.reset();
        info!(lease, "serving under etcd lease");
        current.send_replace(Some(lease));
        let why = renew_until_lost(renewer, &timing, expires, &cancel).await;
        current.send_replace(None);
        match why {
            None => {
                let _ = api.revoke(lease).await;
                info!(lease, "lease revoked");
                return;
            }
            Some(why) => warn!(lease, %why, "lease lost: stopped serving"),
        }
    }
    current.send_replace(None);
}

async fn join(
    api: &dyn LeaseApi,
    on_grant: &dyn OnGrant,
    timing: &LeaseTiming,
) -> Result<(i64, Box<dyn Renewer>, Instant), CoordError> {
    let sent = Instant::now();
    let lease = api.grant(timing.ttl).await?;
    let renewer = api.keep_alive(lease).await?;
    on_grant.granted(lease).await?;
    Ok((lease, renewer, sent + timing.ttl))
}

/// Renew until the lease is lost (returns why) or `cancel` (returns None).
async fn renew_until_lost(
    mut renewer: Box<dyn Renewer>,
    timing: &LeaseTiming,
    mut expires: Instant,
    cancel: &CancellationToken,
) -> Option<String> {
    loop {
        let fence_at = expires - timing.fence_margin;
        let next = (Instant::now() + timing.renew_every).min(fence_at);
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= fence_at {
            return Some("no renewal before the fence deadline".into());
        }
        let sent = Instant::now();
        let answer = tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(fence_at) => {
                return Some("etcd did not answer a keep-alive in time".into())
            }
            a = renewer.renew() => a,
        };
        match answer {
            Ok(ttl) if !ttl.is_zero() => expires = sent + ttl,
            Ok(_) => return Some("etcd says the lease has expired".into()),
            Err(e) => return Some(format!("keep-alive failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A lease service whose answers the test controls.
    #[derive(Default)]
    struct FakeEtcd {
        next: AtomicI64,
        /// When set, keep-alives hang (no leader, partition).
        silent: AtomicBool,
        /// When set, grants fail (etcd down).
        down: AtomicBool,
        revoked: AtomicI64,
    }

    struct FakeRenewer(Arc<FakeEtcd>);

    #[async_trait]
    impl LeaseApi for Arc<FakeEtcd> {
        async fn grant(&self, _ttl: Duration) -> Result<i64, CoordError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(CoordError::Etcd("connection refused".into()));
            }
            Ok(self.next.fetch_add(1, Ordering::SeqCst) + 1)
        }
        async fn keep_alive(&self, _lease: i64) -> Result<Box<dyn Renewer>, CoordError> {
            Ok(Box::new(FakeRenewer(self.clone())))
        }
        async fn revoke(&self, lease: i64) -> Result<(), CoordError> {
            self.revoked.store(lease, Ordering::SeqCst);
            Ok(())
        }
    }

    #[async_trait]
    impl Renewer for FakeRenewer {
        async fn renew(&mut self) -> Result<Duration, CoordError> {
            if self.0.silent.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(Duration::from_secs(5))
        }
    }

    struct NoOp;
    #[async_trait]
    impl OnGrant for NoOp {
        async fn granted(&self, _lease: i64) -> Result<(), CoordError> {
            Ok(())
        }
    }

    fn start(etcd: &Arc<FakeEtcd>) -> (watch::Receiver<Option<i64>>, CancellationToken) {
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let (api, c) = (etcd.clone(), cancel.clone());
        tokio::spawn(async move {
            let timing = LeaseTiming::for_ttl(Duration::from_secs(5));
            keep(&api, &NoOp, timing, tx, c).await;
        });
        (rx, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_etcd_fences_before_the_lease_can_expire() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, _cancel) = start(&etcd);
        rx.wait_for(|l| l.is_some()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(*rx.borrow(), Some(1), "healthy renewals keep the lease");

        etcd.silent.store(true, Ordering::SeqCst);
        etcd.down.store(true, Ordering::SeqCst);
        let silent_at = Instant::now();
        rx.wait_for(|l| l.is_none()).await.unwrap();
        let fenced_after = silent_at.elapsed();
        // The last successful renewal was at most renew_every (5/3 s) before
        // silence began; the server keeps the lease 5 s after it.
        assert!(
            fenced_after <= Duration::from_secs(5) - Duration::from_millis(1250),
            "fenced {fenced_after:?} after etcd went silent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejoins_with_a_new_lease_when_etcd_returns() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, cancel) = start(&etcd);
        rx.wait_for(|l| *l == Some(1)).await.unwrap();
        etcd.silent.store(true, Ordering::SeqCst);
        etcd.down.store(true, Ordering::SeqCst);
        rx.wait_for(|l| l.is_none()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*rx.borrow(), None, "no serving while etcd is down");
        etcd.silent.store(false, Ordering::SeqCst);
        etcd.down.store(false, Ordering::SeqCst);
        rx.wait_for(|l| *l == Some(2)).await.unwrap();
        cancel.cancel();
        rx.wait_for(|l| l.is_none()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(etcd.revoked.load(Ordering::SeqCst), 2, "revoked on stop");
    }
}
