//! The BMC gate: whether this replica may take a BMC action *now*.
//!
//! Every action on a BMC (`sol deactivate`, `sol activate`, the supervisor's
//! probe, anything ipmitool sends) first asks [`LeaseGate::permit`] for the
//! claim it acts under. With etcd the answer is a deadline on the monotonic
//! clock: the lease keeper ([`super::etcd::lease`]) publishes, after every
//! renewal, the lease it holds and its fence deadline (`sent + ttl -
//! fence_margin`, before etcd could expire the lease and another replica claim
//! the console). The check is a comparison with `Instant::now()`, no message
//! to any task: a replica that was paused (SIGSTOP) past its deadline is
//! refused at its first instruction after SIGCONT, before the lease keeper
//! even ran. A claim made under an earlier lease is refused too, even while
//! a newer lease is valid. Past the deadline a replica only kills its local
//! processes.
//!
//! Without etcd (the local coordinator) the gate is always open.
//!
//! ```text
//!  permit(lease) ─▶ current lease == lease and now < valid_until ─▶ BmcPermit (until)
//!                └▶ otherwise ─▶ CoordError::PastDeadline: no BMC action, kill locally
//! ```
//!
//! Callers: [`super::Fence::permit`] (backends, the manager's supervisor),
//! `sol::ipmitool` (which also re-checks the deadline in the child between
//! fork and exec), the socat backend's activation gate.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::CoordError;

/// The lease this replica holds and until when it may act under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    pub lease: i64,
    /// The fence deadline (monotonic clock).
    pub valid_until: Instant,
}

/// Reads the lease keeper's latest [`LeaseState`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaseGate {
    /// None: always open (no etcd).
    state: Option<watch::Receiver<Option<LeaseState>>>,
}

impl LeaseGate {
    /// A gate that is always open: the local coordinator's.
    pub fn always() -> Self {
        Self { state: None }
    }

    /// A gate following the lease keeper's published state.
    pub fn following(state: watch::Receiver<Option<LeaseState>>) -> Self {
        Self { state: Some(state) }
    }

    /// May a BMC action be taken now under a claim bound to `lease`?
    pub fn permit(&self, lease: i64) -> Result<BmcPermit, CoordError> {
        let Some(state) = &self.state else {
            return Ok(BmcPermit { until: None });
        };
        let now = Instant::now();
        match *state.borrow() {
            Some(s) if s.lease == lease && now < s.valid_until => Ok(BmcPermit {
                until: Some(s.valid_until),
            }),
            Some(s) if s.lease == lease => Err(CoordError::PastDeadline(format!(
                "lease {lease} passed its fence deadline {:?} ago",
                now - s.valid_until
            ))),
            Some(s) => Err(CoordError::PastDeadline(format!(
                "the claim was made under lease {lease}, this replica now holds lease {}",
                s.lease
            ))),
            None => Err(CoordError::PastDeadline(format!(
                "lease {lease} is lost and this replica holds none"
            ))),
        }
    }
}

/// A yes from the gate, valid until `until` (None: no deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BmcPermit {
    until: Option<Instant>,
}

impl BmcPermit {
    /// A permit without a deadline (local mode, tests).
    pub fn unbounded() -> Self {
        Self { until: None }
    }

    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// How long the permit still holds (None: no deadline; zero: expired).
    pub fn remaining(&self) -> Option<Duration> {
        self.until
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The deadline on the std clock, for a check in a forked child (the
    /// same CLOCK_MONOTONIC; with tokio's paused clock in tests it may lie
    /// ahead of the real one, which only makes that check more lenient).
    pub fn until_std(&self) -> Option<std::time::Instant> {
        self.until.map(Instant::into_std)
    }
}

/// A coordinator for tests whose claims are bound to a lease the test
/// names and whose gate follows a state the test sets (or leaves alone).
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::{LeaseGate, LeaseState};
    use crate::coordinator::local::LocalCoordinator;
    use crate::coordinator::{CoordError, Coordinator, Ownership};
    use crate::spec::NodeId;

    pub(crate) struct Gated {
        local: LocalCoordinator,
        lease: i64,
        state: watch::Receiver<Option<LeaseState>>,
        /// The etcd check takes this long.
        pub(crate) check_takes: Duration,
    }

    impl Gated {
        /// Claims under `lease`, valid for `valid_for` from now unless the
        /// test publishes otherwise on the sender.
        pub(crate) fn new(
            lease: i64,
            valid_for: Duration,
        ) -> (Self, watch::Sender<Option<LeaseState>>) {
            let (tx, state) = watch::channel(Some(LeaseState {
                lease,
                valid_until: Instant::now() + valid_for,
            }));
            let gated = Self {
                local: LocalCoordinator::new("r1"),
                lease,
                state,
                check_takes: Duration::ZERO,
            };
            (gated, tx)
        }
    }

    #[async_trait]
    impl Coordinator for Gated {
        fn replica_id(&self) -> &str {
            self.local.replica_id()
        }
        fn serving(&self) -> watch::Receiver<bool> {
            self.local.serving()
        }
        async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError> {
            let mut o = self.local.acquire(node).await?;
            o.lease = self.lease;
            Ok(o)
        }
        async fn check(&self, ownership: &Ownership) -> Result<(), CoordError> {
            tokio::time::sleep(self.check_takes).await;
            self.local.check(ownership).await
        }
        async fn release(&self, ownership: &Ownership) -> Result<(), CoordError> {
            self.local.release(ownership).await
        }
        fn gate(&self) -> LeaseGate {
            LeaseGate::following(self.state.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_at(lease: i64, valid_for: Duration) -> (watch::Sender<Option<LeaseState>>, LeaseGate) {
        let (tx, rx) = watch::channel(Some(LeaseState {
            lease,
            valid_until: Instant::now() + valid_for,
        }));
        (tx, LeaseGate::following(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_closes_at_the_deadline_without_anyone_telling_it() {
        let (_tx, gate) = gate_at(7, Duration::from_secs(2));
        let permit = gate.permit(7).expect("valid before the deadline");
        assert_eq!(permit.remaining(), Some(Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert!(gate.permit(7).is_ok(), "1 ms before the deadline");
        // Nobody publishes anything (a paused lease keeper): the clock alone
        // closes the gate.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let err = gate.permit(7).unwrap_err();
        assert!(matches!(err, CoordError::PastDeadline(_)), "{err}");
        assert!(err.to_string().contains("deadline"), "{err}");
        assert_eq!(permit.remaining(), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_deadline_and_a_new_lease_does_not_cover_old_claims() {
        let (tx, gate) = gate_at(7, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(Some(LeaseState {
            lease: 7,
            valid_until: Instant::now() + Duration::from_secs(2),
        }));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(gate.permit(7).is_ok(), "renewed");
        // Lost, then a new lease: claims of lease 7 stay refused.
        tx.send_replace(None);
        assert!(gate.permit(7).is_err());
        tx.send_replace(Some(LeaseState {
            lease: 8,
            valid_until: Instant::now() + Duration::from_secs(2),
        }));
        let err = gate.permit(7).unwrap_err();
        assert!(err.to_string().contains("lease 8"), "{err}");
        assert!(gate.permit(8).is_ok());
    }

    #[test]
    fn the_local_gate_is_always_open() {
        let gate = LeaseGate::always();
        let p = gate.permit(0).unwrap();
        assert_eq!(p.until(), None);
        assert_eq!(p.remaining(), None);
    }
}
