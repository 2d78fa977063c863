//! The per-console supervisor: follows the backend's health and probes the
//! BMC (`chassis power status`, never SOL) when the console starts, retrying
//! with backoff until the BMC answers. The probe is a BMC action: it runs
//! under the console's claim and its BMC gate (see `sol::ipmitool`). Either source failing makes the
//! console FAILED with a readable `last_error`; both fine makes it RUNNING.
//!
//! ```text
//!  start ──probe──▶ ok ──▶ (idle; follows backend health)
//!            │
//!            └─fail─▶ FAILED ──wait 1s,2s,4s..──▶ probe again
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::{ConsoleManager, ConsoleState, Slot};
use crate::backend::{BmcProbe, ConsoleBackend, Health};
use crate::backoff::Backoff;
use crate::coordinator::Fence;
use crate::sol::ipmitool::IpmiTool;
use crate::spec::{ConsoleSpec, Target};

pub(super) fn spawn(
    manager: ConsoleManager,
    slot: Arc<Slot>,
    spec: &ConsoleSpec,
    health: watch::Receiver<Health>,
    stop: CancellationToken,
    fence: Fence,
    backend: &dyn ConsoleBackend,
) {
    let cfg = &manager.inner.config.console;
    // Serial consoles probe their BMC (the backend's own way, or ipmitool);
    // VNC backends report upstream trouble through their health.
    let tool = match &spec.target {
        Target::Ipmi(ipmi) => Some(backend.bmc_probe(ipmi, &fence).unwrap_or_else(|| {
            Box::new(IpmiTool::new(
                cfg.ipmitool_path.as_os_str(),
                ipmi.clone(),
                cfg.subprocess_timeout,
                manager.inner.processes.clone(),
                fence,
            )) as Box<dyn BmcProbe>
        })),
        Target::Vnc(_) => None,
    };
    let backoff = Backoff::new(Duration::from_secs(1), cfg.retry_max_backoff);
    let span = tracing::info_span!(parent: None, "supervisor", node = %spec.node);
    let tasks = manager.inner.tasks.clone();
    let sup = Supervisor {
        manager,
        slot,
        tool,
        health,
        stop,
        backoff,
        probe_error: None,
        backend_error: None,
    };
    tasks.spawn(sup.run().instrument(span));
}

struct Supervisor {
    manager: ConsoleManager,
    slot: Arc<Slot>,
    tool: Option<Box<dyn BmcProbe>>,
    health: watch::Receiver<Health>,
    stop: CancellationToken,
    backoff: Backoff,
    probe_error: Option<String>,
    backend_error: Option<String>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut probe_at = self.tool.is_some().then(Instant::now);
        let mut backend_alive = true;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = self.health.changed(), if backend_alive => {
                    if changed.is_err() {
                        backend_alive = false; // the backend reports no more
                        continue;
                    }
                    self.backend_error = match &*self.health.borrow_and_update() {
                        Health::Ok => None,
                        Health::Failed(why) => Some(why.clone()),
                    };
                }
                _ = sleep_until(probe_at), if probe_at.is_some() => {
                    // Boxed: the probe's state (an ipmitool run) is not
                    // carried by every console's waiting supervisor.
                    probe_at = Box::pin(self.probe()).await;
                }
            }
            self.publish();
        }
    }

    /// One probe; returns when the next one is due (None: BMC is fine).
    async fn probe(&mut self) -> Option<Instant> {
        let tool = self.tool.as_ref()?;
        let probes = self.manager.inner.probes.clone();
        let result = tokio::select! {
            _ = self.stop.cancelled() => return None,
            r = async {
                let _turn = probes.acquire_owned().await;
                tool.probe().await
            } => r,
        };
        match result {
            Ok(()) => {
                if self.probe_error.take().is_some() {
                    info!("BMC answers again");
                }
                self.backoff.reset();
                None
            }
            Err(e) => {
                let wait = self.backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "BMC probe failed");
                self.probe_error = Some(format!("{e} (retrying in {}s)", wait.as_secs()));
                Some(Instant::now() + wait)
            }
        }
    }

    fn publish(&self) {
        let error = self.backend_error.clone().or(self.probe_error.clone());
        let stop = &self.stop;
        self.manager.update(&self.slot, |st| {
            if stop.is_cancelled() || st.running.is_none() {
                return;
            }
            match error {
                Some(why) => {
                    st.info.state = ConsoleState::Failed;
                    st.info.last_error = Some(why);
                }
                // last_error stays: the last problem it recovered from.
                None => st.info.state = ConsoleState::Running,
            }
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
