//! This replica's etcd lease: granted, kept alive, and given up *before* it
//! could expire at the server, so a replica that cannot reach etcd stops
//! serving before any other replica may take its consoles.
//!
//! ```text
//!          grant ok                 renew ok (the deadline moves on)
//!  joining ────────▶ serving(lease) ◀───────────────┐
//!     ▲                  │    │ renew failed or     │
//!     │                  │    └▶ stream closed ─────┘ reopen the stream (any
//!     │ backoff          │       member), every 100 ms, until the deadline
//!     │                  │ etcd says TTL 0, or no renewal by the fence
//!     └──── fenced ◀─────┘ deadline (= expiry - fence_margin); publishes
//!                          None: the manager stops every console
//! ```
//!
//! Expiry is measured from the moment a keep-alive was *sent*: the server
//! renewed no earlier than that, so it cannot expire the lease before
//! `sent + ttl`. A broken keep-alive stream is therefore not a lost lease
//! (the member it ran on may have died while the cluster kept quorum); the
//! lease is lost when etcd says so or when the deadline passes without a
//! renewal. The loop publishes the current lease on a watch channel; `None`
//! means "do not serve". Behind [`LeaseApi`] so the timing is tested on
//! tokio's paused clock.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::coordinator::gate::LeaseState;
use crate::coordinator::CoordError;

/// The lease calls the keeper needs.
#[async_trait]
pub trait LeaseApi: Send + Sync + 'static {
    /// A new lease; its id.
    async fn grant(&self, ttl: Duration) -> Result<i64, CoordError>;
    /// Open a keep-alive stream for `lease` (on any member that answers).
    /// If etcd says the lease is gone, the stream's first renewal says TTL 0.
    async fn keep_alive(&self, lease: i64) -> Result<Box<dyn Renewer>, CoordError>;
    async fn revoke(&self, lease: i64) -> Result<(), CoordError>;
    /// Whether another member could answer when this one is slow (false
    /// with a single endpoint: then a slow renewal is simply waited for).
    fn can_fail_over(&self) -> bool {
        true
    }
}

/// One lease's keep-alive stream.
#[async_trait]
pub trait Renewer: Send {
    /// One round trip: the TTL the server now gives the lease (zero: gone).
    async fn renew(&mut self) -> Result<Duration, CoordError>;
    /// The stream did not answer in time and is about to be dropped; the
    /// next stream had better be opened elsewhere.
    fn abandon(&mut self) {}
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
    /// Renew this often (a sixth of the TTL: a leader election, which
    /// stalls renewals for up to two election timeouts, must fit between
    /// the last renewal and the fence deadline).
    pub renew_every: Duration,
    /// A renewal not answered within this is given up and a new stream
    /// opened (a member that hangs must not hold the lease hostage).
    pub answer_within: Duration,
    /// Stop serving this long before the lease could expire: the time the
    /// manager needs to close listeners and end SOL sessions.
    pub fence_margin: Duration,
}

impl LeaseTiming {
    pub fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: ttl / 6,
            answer_within: (ttl / 6).max(Duration::from_millis(500)),
            fence_margin: (ttl / 4).max(Duration::from_millis(500)).min(ttl / 2),
        }
    }
}

/// Keep a lease until `cancel`; publish it on `current` (None when fenced)
/// and, for the BMC gate, the lease with its fence deadline on `valid`
/// (moved on by every renewal; set before `current` names a new lease).
/// On cancel the lease is revoked, so every key bound to it goes at once.
pub async fn keep(
    api: &dyn LeaseApi,
    on_grant: &dyn OnGrant,
    timing: LeaseTiming,
    current: watch::Sender<Option<i64>>,
    valid: watch::Sender<Option<LeaseState>>,
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
        valid.send_replace(Some(LeaseState {
            lease,
            valid_until: expires - timing.fence_margin,
        }));
        current.send_replace(Some(lease));
        let why = renew_until_lost(api, lease, renewer, &timing, expires, &valid, &cancel).await;
        valid.send_replace(None);
        current.send_replace(None);
        match why {
            None => {
                revoke(api, lease).await;
                return;
            }
            Some(why) => warn!(lease, %why, "lease lost: stopped serving"),
        }
    }
    valid.send_replace(None);
    current.send_replace(None);
}

/// The longest a stopping replica waits for etcd to revoke its lease; an
/// etcd that does not answer lets the lease expire by its TTL instead.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Revoke `lease` (every key bound to it goes at once), within [`REVOKE_TIMEOUT`].
async fn revoke(api: &dyn LeaseApi, lease: i64) {
    match tokio::time::timeout(REVOKE_TIMEOUT, api.revoke(lease)).await {
        Ok(Ok(())) => info!(lease, "lease revoked"),
        Ok(Err(e)) => warn!(lease, error = %e, "cannot revoke the lease; it expires by its TTL"),
        Err(_) => warn!(
            lease,
            timeout = ?REVOKE_TIMEOUT,
            "etcd did not answer the lease revoke; it expires by its TTL"
        ),
    }
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
///
/// A failed renewal loses the *stream*, not the lease: the server keeps the
/// lease until `expires` whatever happened to our connection (a member of
/// three killed, a leader election). So a new stream is opened, on whichever
/// member answers, every [`RETRY_PAUSE`] until one renewal gets through or the
/// fence deadline passes. Only etcd saying the lease is gone (TTL 0), or the
/// deadline, ends serving.
async fn renew_until_lost(
    api: &dyn LeaseApi,
    lease: i64,
    renewer: Box<dyn Renewer>,
    timing: &LeaseTiming,
    mut expires: Instant,
    valid: &watch::Sender<Option<LeaseState>>,
    cancel: &CancellationToken,
) -> Option<String> {
    let mut renewer = Some(renewer);
    let mut next = Instant::now() + timing.renew_every;
    let mut last_error: Option<String> = None;
    // How long a renewal may take before its stream is given up for one on
    // another member: twice the last answer's time (at least answer_within),
    // doubled after each give-up, so an etcd that is slow everywhere (busy
    // applying a storm of writes) still gets to answer.
    let mut allowance = timing.answer_within;
    loop {
        let fence_at = expires - timing.fence_margin;
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(next.min(fence_at)) => {}
        }
        if Instant::now() >= fence_at {
            return Some(match last_error {
                Some(e) => format!("no renewal before the fence deadline (last error: {e})"),
                None => "no renewal before the fence deadline".into(),
            });
        }
        let sent = Instant::now();
        let give_up = match api.can_fail_over() {
            true => (sent + allowance).min(fence_at),
            false => fence_at,
        };
        let answer = tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(give_up) => None,
            a = renew_once(api, lease, &mut renewer) => Some(a),
        };
        let answer = answer.unwrap_or_else(|| {
            // A stream that hangs (its member stopped, or cut off from the
            // others) is as good as broken: try another one.
            if let Some(stream) = renewer.as_mut() {
                stream.abandon();
            }
            allowance *= 2;
            Err(CoordError::Etcd(format!(
                "no answer to a keep-alive within {:?}",
                give_up - sent
            )))
        });
        match answer {
            Ok(ttl) if !ttl.is_zero() => {
                crate::metrics::get().lease_renewed(Instant::now() - sent);
                if let Some(e) = last_error.take() {
                    info!(lease, after = %e, "keep-alive resumed");
                }
                expires = sent + ttl;
                valid.send_replace(Some(LeaseState {
                    lease,
                    valid_until: expires - timing.fence_margin,
                }));
                // From the send: a slow answer must not push the next
                // renewal, and with it the deadline, further out.
                next = sent + timing.renew_every;
                // Like a TCP retransmission timeout: twice what etcd takes now.
                allowance = timing.answer_within.max((Instant::now() - sent) * 2);
            }
            Ok(_) => return Some("etcd says the lease has expired".into()),
            Err(e) => {
                warn!(lease, error = %e, left = ?fence_at - Instant::now(),
                      "keep-alive failed; reopening it (the lease is still ours until the fence deadline)");
                renewer = None;
                last_error = Some(e.to_string());
                next = Instant::now() + RETRY_PAUSE;
            }
        }
    }
}

/// Pause between attempts to reopen a failed keep-alive stream.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One renewal, on the open stream or on a new one.
async fn renew_once(
    api: &dyn LeaseApi,
    lease: i64,
    renewer: &mut Option<Box<dyn Renewer>>,
) -> Result<Duration, CoordError> {
    let stream = match renewer {
        Some(stream) => stream,
        None => renewer.insert(api.keep_alive(lease).await?),
    };
    stream.renew().await
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
        /// When set, the open stream breaks (its member died) on next use.
        break_streams: AtomicBool,
        /// When set, new keep-alive streams cannot be opened.
        no_new_streams: AtomicBool,
        /// Which stream generation is current; older ones are broken.
        generation: AtomicI64,
        /// When set, etcd answers that the lease is gone.
        expired: AtomicBool,
        /// When set, the stream open now hangs (its member stopped), and
        /// streams opened later work.
        hang_current: AtomicBool,
        abandoned: AtomicI64,
        /// Every renewal takes this long (ms): etcd busy everywhere.
        slow_ms: AtomicI64,
        /// A single endpoint: nowhere to fail over to.
        single: AtomicBool,
    }

    struct FakeRenewer(Arc<FakeEtcd>, i64);

    #[async_trait]
    impl LeaseApi for Arc<FakeEtcd> {
        async fn grant(&self, _ttl: Duration) -> Result<i64, CoordError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(CoordError::Etcd("connection refused".into()));
            }
            Ok(self.next.fetch_add(1, Ordering::SeqCst) + 1)
        }
        async fn keep_alive(&self, _lease: i64) -> Result<Box<dyn Renewer>, CoordError> {
            if self.no_new_streams.load(Ordering::SeqCst) {
                return Err(CoordError::Etcd("tcp connect error".into()));
            }
            let generation = self.generation.load(Ordering::SeqCst);
            Ok(Box::new(FakeRenewer(self.clone(), generation)))
        }
        async fn revoke(&self, lease: i64) -> Result<(), CoordError> {
            self.revoked.store(lease, Ordering::SeqCst);
            Ok(())
        }
        fn can_fail_over(&self) -> bool {
            !self.single.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Renewer for FakeRenewer {
        async fn renew(&mut self) -> Result<Duration, CoordError> {
            if self.0.silent.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let slow = self.0.slow_ms.load(Ordering::SeqCst) as u64;
            tokio::time::sleep(Duration::from_millis(slow)).await;
            if self.0.hang_current.swap(false, Ordering::SeqCst) {
                self.0.generation.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            if self.0.break_streams.swap(false, Ordering::SeqCst) {
                self.0.generation.fetch_add(1, Ordering::SeqCst);
            }
            if self.1 != self.0.generation.load(Ordering::SeqCst) {
                return Err(CoordError::Etcd("keep-alive stream closed".into()));
            }
            if self.0.expired.load(Ordering::SeqCst) {
                return Ok(Duration::ZERO);
            }
            Ok(Duration::from_secs(5))
        }
        fn abandon(&mut self) {
            self.0.abandoned.fetch_add(1, Ordering::SeqCst);
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
        let (rx, _gate, cancel) = start_gated(etcd);
        (rx, cancel)
    }

    /// [`start`], and the BMC gate on the keeper's published state.
    fn start_gated(
        etcd: &Arc<FakeEtcd>,
    ) -> (
        watch::Receiver<Option<i64>>,
        crate::coordinator::gate::LeaseGate,
        CancellationToken,
    ) {
        let (tx, rx) = watch::channel(None);
        let (valid_tx, valid_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let (api, c) = (etcd.clone(), cancel.clone());
        tokio::spawn(async move {
            let timing = LeaseTiming::for_ttl(Duration::from_secs(5));
            keep(&api, &NoOp, timing, tx, valid_tx, c).await;
        });
        let gate = crate::coordinator::gate::LeaseGate::following(valid_rx);
        (rx, gate, cancel)
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

    /// The BMC gate follows the keeper: open while renewals succeed, closed
    /// by the clock at the fence deadline (no later than the keeper fences),
    /// and a new lease does not reopen it for claims of the lost one.
    #[tokio::test(start_paused = true)]
    async fn the_bmc_gate_closes_by_the_fence_deadline_and_stays_closed_for_old_claims() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, gate, _cancel) = start_gated(&etcd);
        rx.wait_for(|l| l.is_some()).await.unwrap();
        for _ in 0..300 {
            assert!(gate.permit(1).is_ok(), "open while renewals succeed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let timing = LeaseTiming::for_ttl(Duration::from_secs(5));
        etcd.silent.store(true, Ordering::SeqCst);
        etcd.down.store(true, Ordering::SeqCst);
        let silent_at = Instant::now();
        let mut closed_at = None;
        while rx.borrow().is_some() {
            if closed_at.is_none() && gate.permit(1).is_err() {
                closed_at = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fenced_at = Instant::now();
        let closed_at = closed_at.unwrap_or(fenced_at);
        assert!(gate.permit(1).is_err(), "closed once fenced");
        // The last renewal was sent at most renew_every before the silence.
        assert!(
            closed_at - silent_at <= timing.ttl - timing.fence_margin,
            "gate open {:?} into the silence",
            closed_at - silent_at
        );
        assert!(closed_at <= fenced_at);
        etcd.silent.store(false, Ordering::SeqCst);
        etcd.down.store(false, Ordering::SeqCst);
        rx.wait_for(|l| *l == Some(2)).await.unwrap();
        assert!(gate.permit(2).is_ok(), "the new lease's claims may act");
        let err = gate.permit(1).unwrap_err();
        assert!(matches!(err, CoordError::PastDeadline(_)), "{err}");
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

    /// Every value `rx` takes until the test ends (None = fenced).
    fn record(mut rx: watch::Receiver<Option<i64>>) -> Arc<std::sync::Mutex<Vec<Option<i64>>>> {
        let seen = Arc::new(std::sync::Mutex::new(vec![*rx.borrow_and_update()]));
        let out = seen.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                out.lock().unwrap().push(*rx.borrow_and_update());
            }
        });
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_is_reopened_and_the_lease_kept() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, _cancel) = start(&etcd);
        rx.wait_for(|l| *l == Some(1)).await.unwrap();
        let seen = record(rx.clone());
        for _ in 0..5 {
            // The member under the stream dies; opening a new stream on
            // another member works at once, or after a second (election).
            etcd.break_streams.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            etcd.break_streams.store(true, Ordering::SeqCst);
            etcd.no_new_streams.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            etcd.no_new_streams.store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some(1)],
            "never fenced, never a new lease"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_stream_before_the_deadline_fences_in_time() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, _cancel) = start(&etcd);
        rx.wait_for(|l| *l == Some(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        etcd.break_streams.store(true, Ordering::SeqCst);
        etcd.no_new_streams.store(true, Ordering::SeqCst);
        etcd.down.store(true, Ordering::SeqCst);
        let broken_at = Instant::now();
        rx.wait_for(|l| l.is_none()).await.unwrap();
        let timing = LeaseTiming::for_ttl(Duration::from_secs(5));
        // The last renewal was at most renew_every before the break.
        assert!(
            broken_at.elapsed() <= timing.ttl - timing.fence_margin,
            "fenced {:?} after the break",
            broken_at.elapsed()
        );
        assert!(
            broken_at.elapsed() >= timing.ttl - timing.fence_margin - timing.renew_every,
            "fenced early, {:?} after the break, while the lease was valid",
            broken_at.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_saying_the_lease_is_gone_fences_at_once() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, _cancel) = start(&etcd);
        rx.wait_for(|l| *l == Some(1)).await.unwrap();
        let seen = record(rx.clone());
        etcd.expired.store(true, Ordering::SeqCst);
        let timing = LeaseTiming::for_ttl(Duration::from_secs(5));
        tokio::time::sleep(timing.renew_every + Duration::from_millis(1)).await;
        // Fenced at the first renewal and a new lease tried at once; a watch
        // shows the latest value, so the None may be overtaken by Some(2)
        // (the serving signal in mod.rs turns any lease change into a fence).
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.first(), Some(&Some(1)), "{seen:?}");
        assert!(
            seen[1..].iter().all(|l| *l != Some(1)),
            "lease 1 not given up: {seen:?}"
        );
        assert!(seen.len() > 1, "nothing changed: {seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_stream_is_abandoned_for_another() {
        let etcd = Arc::new(FakeEtcd::default());
        let (mut rx, _cancel) = start(&etcd);
        rx.wait_for(|l| *l == Some(1)).await.unwrap();
        let seen = record(rx.clone());
        for _ in 0..3 {
            etcd.hang_current.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        assert_eq!(etcd.abandoned.load(Ordering::SeqCst), 3);
        assert_eq!(*seen.lock().unwrap(), vec![Some(1)], "never fenced");
    }

    /// A renewal slower than `answer_within` everywhere (etcd applying a
    /// storm of writes before it answers): the allowance grows instead of
    /// giving up stream after stream until the deadline.
    #[tokio::test(start_paused = true)]
    async fn an_etcd_slow_everywhere_keeps_the_lease() {
        for single in [false, true] {
            let etcd = Arc::new(FakeEtcd::default());
            etcd.single.store(single, Ordering::SeqCst);
            let (mut rx, _cancel) = start(&etcd);
            rx.wait_for(|l| *l == Some(1)).await.unwrap();
            let seen = record(rx.clone());
            etcd.slow_ms.store(1500, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(*seen.lock().unwrap(), vec![Some(1)], "single={single}");
            let abandoned = etcd.abandoned.load(Ordering::SeqCst);
            match single {
                true => assert_eq!(abandoned, 0, "nowhere else to go"),
                false => assert!(abandoned > 0, "slow streams were given up"),
            }
        }
    }
}
