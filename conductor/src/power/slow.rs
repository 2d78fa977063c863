//! A BMC for unit tests whose power state settles a fixed time after each
//! command, on tokio's clock (so a paused clock drives it): what a real
//! BMC's "PoweringOn" looks like, without one. `Bmc::Slow` for nodes of
//! the test-only driver `slow-test`; callers: the power service's tests.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Power;

#[derive(Debug)]
pub struct SlowBmc {
    settle: Duration,
    state: Mutex<SlowState>,
}

#[derive(Debug)]
struct SlowState {
    now: Power,
    /// The state commanded last, and when it shows.
    pending: Option<(Power, Instant)>,
    commands: Vec<Power>,
}

impl SlowBmc {
    /// Off, settling `settle` after each command.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            state: Mutex::new(SlowState {
                now: Power::Off,
                pending: None,
                commands: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_power(&self, want: Power) {
        let mut s = self.lock();
        s.commands.push(want);
        s.pending = Some((want, Instant::now() + self.settle));
    }

    pub fn power_state(&self) -> Power {
        let mut s = self.lock();
        if let Some((p, at)) = s.pending {
            if Instant::now() >= at {
                s.now = p;
                s.pending = None;
            }
        }
        s.now
    }

    /// Every power command received, in order.
    pub fn commands(&self) -> Vec<Power> {
        self.lock().commands.clone()
    }
}
