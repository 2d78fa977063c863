//! Starting a console on its port, for `ConsoleManager::enable`: claim
//! the node, start the backend (bounded by `subprocess_timeout`), and when a
//! fresh port turns out busy at bind time move on to the next free one (see
//! `port_choice`); record RUNNING, or FAILED with the reason.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::port_choice::{self, PortChoice};
use super::{supervise, ConsoleInfo, ConsoleManager, ConsoleState, Endpoint, Running, Slot};
use crate::backend::{BackendError, ConsoleBackend, ConsoleContext, Health, RunningConsole};
use crate::coordinator::Fence;
use crate::error::ConsoleError;
use crate::spec::ConsoleSpec;

impl ConsoleManager {
    pub(super) async fn start(
        &self,
        slot: &Arc<Slot>,
        backend: &Arc<dyn ConsoleBackend>,
        spec: ConsoleSpec,
        mut choice: PortChoice,
    ) -> Result<ConsoleInfo, ConsoleError> {
        let inner = &self.inner;
        let ownership = inner.coordinator.acquire(&spec.node).await?;
        let fence = Fence::new(inner.coordinator.clone(), ownership.clone());
        let started = self
            .launch_on_a_free_port(backend, &spec, &mut choice, &fence)
            .await;
        let (console, health_rx) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = inner.coordinator.release(&ownership).await;
                // The backend's own words, without "console for node ...".
                let why = match &e {
                    ConsoleError::Start { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                self.update(slot, |st| {
                    st.info.state = ConsoleState::Failed;
                    st.info.last_error = Some(why);
                });
                return Err(e);
            }
        };
        let port = choice.port;
        let supervisor = inner.cancel.child_token();
        let info = self.update(slot, |st| {
            st.running = Some(Running {
                console,
                ownership,
                supervisor: supervisor.clone(),
            });
            st.info.state = ConsoleState::Running;
            st.info.endpoint = Some(Endpoint {
                host: inner.config.console.url_host(),
                port,
            });
        });
        supervise::spawn(
            self.clone(),
            slot.clone(),
            &spec,
            health_rx,
            supervisor,
            fence,
            backend.as_ref(),
        );
        info!(port, url = %info.endpoint.as_ref().map(Endpoint::url).unwrap_or_default(), "console running");
        Ok(info)
    }

    /// Start the backend on `choice.port`; a fresh port taken between our
    /// look and the bind moves on to the next free one (`choice.port` says
    /// which), a sticky or explicit one fails.
    async fn launch_on_a_free_port(
        &self,
        backend: &Arc<dyn ConsoleBackend>,
        spec: &ConsoleSpec,
        choice: &mut PortChoice,
        fence: &Fence,
    ) -> Result<(Box<dyn RunningConsole>, watch::Receiver<Health>), ConsoleError> {
        let mut tried = Vec::new();
        loop {
            let port = choice.port;
            match self.launch(backend, spec, port, fence).await {
                Ok(started) => return Ok(started),
                Err(BackendError::PortInUse { .. })
                    if choice.fresh && tried.len() < port_choice::MAX_FRESH_TRIES =>
                {
                    tried.push(port);
                    let next = self.next_fresh_port(&spec.node, &tried)?;
                    info!(
                        busy = port,
                        port = next,
                        "console port in use by another program; trying the next free one"
                    );
                    choice.port = next;
                }
                Err(source) => {
                    warn!(error = %source, port, "console did not start");
                    return Err(ConsoleError::Start {
                        node: spec.node.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// One start of the backend on `port`, bounded by `subprocess_timeout`.
    async fn launch(
        &self,
        backend: &Arc<dyn ConsoleBackend>,
        spec: &ConsoleSpec,
        port: u16,
        fence: &Fence,
    ) -> Result<(Box<dyn RunningConsole>, watch::Receiver<Health>), BackendError> {
        let inner = &self.inner;
        let (health_tx, health_rx) = watch::channel(Health::Ok);
        let ctx = ConsoleContext {
            node: spec.node.clone(),
            target: spec.target.clone(),
            listen: SocketAddr::new(inner.config.console.socat_address, port),
            health: health_tx,
            cancel: inner.cancel.child_token(),
            fence: fence.clone(),
            processes: inner.processes.clone(),
        };
        let timeout = inner.config.console.subprocess_timeout;
        let console = tokio::time::timeout(timeout, backend.start(ctx))
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Timeout {
                    what: format!("starting the console on port {port}"),
                    timeout,
                })
            })?;
        Ok((console, health_rx))
    }
}
