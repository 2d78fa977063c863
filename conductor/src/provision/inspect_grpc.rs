//! The `inspector` and `agent` inspect interfaces: the inspect service
//! (`inspect.v1` over gRPC) does the work, the conductor keeps the node's
//! state. [`GrpcInspect`] implements [`InspectInterface`]; [`follow`]
//! watches the service's results and ends each waiting node's inspection.
//!
//! ```text
//!  PUT provision inspect ──▶ check_service ──ValidateInspection──▶ refused: 400, node unchanged
//!  inspecting ──StartInspection──▶ WAITING ──▶ node: inspect wait (unlocked)
//!  follow: WatchInspections ──FINISHED──▶ inspect wait → manageable
//!                           ──FAILED────▶ inspect wait → inspect failed, last_error
//!  abort from inspect wait ──AbortInspection──▶ then inspect failed
//!  stream (re)opened: each node in inspect wait ──GetInspection──▶ NOT_FOUND:
//!                     the service lost it (restarted) → inspect failed
//! ```
//!
//! Callers: `lib::open` builds the client from `[inspect]` and registers
//! the interfaces (`Interfaces::set_inspect_service`); `lib::run` spawns
//! [`follow`]; `service::provision` drives the interface.

use std::sync::Arc;
use std::time::Duration;

use pb::inspect_service_client::InspectServiceClient;
use porthole_common::tls::ClientTls;
use porthole_proto::inspect::v1 as pb;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::interfaces::{BoxFuture, InspectInterface, InterfaceError, Outcome, StepResult};
use crate::config::InspectSvcConfig;
use crate::model::Node;
use crate::service::{Conductor, InspectionEnd};

#[derive(Debug, thiserror::Error)]
#[error("inspect.endpoint {endpoint:?}: {message}")]
pub struct InspectClientError {
    endpoint: String,
    message: String,
}

/// A lazily connecting client of the inspect service.
#[derive(Clone)]
pub struct InspectClient {
    endpoint: String,
    client: InspectServiceClient<Channel>,
}

impl InspectClient {
    /// A plaintext client (tests); [`InspectClient::from_config`] reads
    /// `[inspect]` with its TLS settings.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, InspectClientError> {
        Self::with_tls(endpoint, timeout, &ClientTls::default())
    }

    /// `[inspect] endpoint`, `timeout` and `tls_*` (as `[console]`'s).
    pub fn from_config(cfg: &InspectSvcConfig) -> Result<Self, InspectClientError> {
        let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
        let tls = ClientTls {
            ca_file: cfg.tls_ca.clone(),
            cert_file: cfg.tls_cert.clone(),
            key_file: cfg.tls_key.clone(),
            server_name: cfg.tls_domain.clone(),
        };
        Self::with_tls(endpoint, cfg.timeout, &tls)
    }

    /// The conductor starts while the inspect service is down.
    fn with_tls(
        endpoint: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Self, InspectClientError> {
        let channel = tls
            .lazy_channel(endpoint, timeout, ("inspect.tls_cert", "inspect.tls_key"))
            .map_err(|e| InspectClientError {
                endpoint: endpoint.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            endpoint: endpoint.into(),
            client: InspectServiceClient::new(channel),
        })
    }

    /// ContinueInspection: the `agent` interface's processing of a
    /// ramdisk's data (`service::continue_inspection` applies the answer).
    pub async fn continue_inspection(
        &self,
        req: pb::ContinueInspectionRequest,
    ) -> Result<pb::ContinueInspectionResponse, tonic::Status> {
        let mut c = self.client.clone();
        c.continue_inspection(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A status as last_error text: the service's own message, or that it
    /// cannot be reached.
    pub fn describe(&self, s: &tonic::Status) -> String {
        // A connection that failed under the call arrives with a transport
        // error as its source, whatever its code (CANCELLED among them).
        let transport =
            std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>());
        if transport {
            return format!(
                "the inspect service at {} is unavailable: {}",
                self.endpoint,
                crate::console::chain(s)
            );
        }
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                if s.message().contains("transport") || s.code() != tonic::Code::Unknown =>
            {
                format!(
                    "the inspect service at {} is unavailable: {}",
                    self.endpoint,
                    s.message()
                )
            }
            _ => s.message().to_owned(),
        }
    }
}

/// One of the inspect service's interfaces (`inspector` or `agent`).
pub struct GrpcInspect {
    name: &'static str,
    client: InspectClient,
}

impl GrpcInspect {
    /// `name` must be `inspector` or `agent` (checked with the config).
    pub fn new(name: &str, client: InspectClient) -> Self {
        let name = if name == "agent" {
            "agent"
        } else {
            "inspector"
        };
        Self { name, client }
    }
}

impl InspectInterface for GrpcInspect {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check_service<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async move {
            let mut c = self.client.client.clone();
            c.validate_inspection(pb::ValidateInspectionRequest {
                interface: self.name.into(),
            })
            .await
            .map(drop)
            .map_err(|s| InterfaceError(self.client.describe(&s)))
        })
    }

    fn inspect<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let mut c = self.client.client.clone();
            let shown = c
                .start_inspection(pb::StartInspectionRequest {
                    node_uuid: node.uuid.clone(),
                    interface: self.name.into(),
                })
                .await
                .map_err(|s| InterfaceError(self.client.describe(&s)))?
                .into_inner();
            match shown.state() {
                pb::InspectionState::Finished => Ok(Outcome::Done),
                pb::InspectionState::Failed | pb::InspectionState::Aborted => {
                    Err(InterfaceError(shown.error))
                }
                _ => Ok(Outcome::Wait),
            }
        })
    }

    fn abort<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async move {
            let mut c = self.client.client.clone();
            c.abort_inspection(pb::AbortInspectionRequest {
                node_uuid: node.uuid.clone(),
            })
            .await
            .map(drop)
            .map_err(|s| InterfaceError(self.client.describe(&s)))
        })
    }
}

/// How long an outcome waits for a node still held by its provision task
/// (the result raced the move to `inspect wait`).
const BUSY_RETRY: Duration = Duration::from_millis(100);
const BUSY_TRIES: u32 = 300;

/// Follow the inspect service's results until the conductor stops: each
/// FINISHED or FAILED inspection ends its node's `inspect wait`. A broken
/// stream is opened again (the service sends every inspection it holds
/// first, so an outcome missed meanwhile still arrives).
pub async fn follow(conductor: Arc<Conductor>, client: InspectClient) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut c = client.client.clone();
        match c.watch_inspections(pb::WatchInspectionsRequest {}).await {
            Ok(stream) => {
                info!(endpoint = %client.endpoint, "following the inspect service's results");
                backoff = Duration::from_millis(200);
                let mut stream = stream.into_inner();
                conductor
                    .tasks
                    .spawn(reconcile(conductor.clone(), client.clone()));
                loop {
                    let item = tokio::select! {
                        _ = conductor.shutdown.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(i)) => outcome(&conductor, i),
                        Some(Err(s)) => {
                            warn!(error = %client.describe(&s), "inspect results stream broke");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(s) => warn!(error = %client.describe(&s), "cannot follow the inspect service"),
        }
        tokio::select! {
            _ = conductor.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// last_error of a node whose inspection the inspect service does not know.
pub const LOST: &str = "The inspect service has no record of this inspection (it was restarted?); inspect the node again.";

/// Once the stream is open: every node waiting in `inspect wait` on an
/// interface of the service is looked up there; one the service does not
/// know (it restarted and lost it) would wait for ever, so it fails with
/// [`LOST`]; one that ended is ended here too (the stream's snapshot says
/// the same; the second is a no-op).
async fn reconcile(conductor: Arc<Conductor>, client: InspectClient) {
    let nodes = match conductor.store.list_nodes().await {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot list the nodes waiting for inspection");
            return;
        }
    };
    for node in nodes {
        if super::State::parse(&node.provision_state).ok() != Some(super::State::InspectWait) {
            continue;
        }
        let ours = super::interfaces::INSPECT_SERVICE_INTERFACES
            .contains(&conductor.interfaces.for_node(&node).inspect.name());
        if !ours {
            continue;
        }
        let mut c = client.client.clone();
        let asked = c
            .get_inspection(pb::GetInspectionRequest {
                node_uuid: node.uuid.clone(),
            })
            .await;
        match asked {
            Ok(i) => outcome(&conductor, i.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                warn!(node = %node.uuid, "the inspect service does not know this node's inspection");
                let result = Err(LOST.to_owned());
                retry_end(conductor.clone(), node.uuid.clone(), result).await;
            }
            Err(s) => {
                warn!(node = %node.uuid, error = %client.describe(&s), "cannot look the inspection up")
            }
        }
    }
}

/// Apply one inspection's result to its node, off the stream's task.
fn outcome(conductor: &Arc<Conductor>, i: pb::Inspection) {
    let result = match i.state() {
        // The agent's result is applied where its data arrived
        // (`service::continue_inspection`), not from here.
        pb::InspectionState::Finished if i.interface == "agent" => return,
        pb::InspectionState::Finished => Ok(()),
        pb::InspectionState::Failed => Err(match i.interface.as_str() {
            "inspector" => format!("ironic-inspector inspection failed: {}", i.error),
            _ => i.error.clone(),
        }),
        // Waiting: nothing yet; aborted: the abort verb moved the node.
        _ => return,
    };
    conductor
        .tasks
        .spawn(retry_end(conductor.clone(), i.node_uuid, result));
}

/// End `uuid`'s inspection, trying again while its lock is held.
async fn retry_end(c: Arc<Conductor>, uuid: String, result: Result<(), String>) {
    for _ in 0..BUSY_TRIES {
        match c.end_inspection(&uuid, result.clone()).await {
            Ok(InspectionEnd::Busy) => {}
            Ok(InspectionEnd::Applied | InspectionEnd::NotWaiting) => return,
            Err(e) => {
                warn!(node = %uuid, error = %e, "cannot record the inspection's result");
                return;
            }
        }
        tokio::select! {
            _ = c.shutdown.cancelled() => return,
            _ = tokio::time::sleep(BUSY_RETRY) => {}
        }
    }
    warn!(node = %uuid, "node still busy; the inspection's result waits for the next stream");
}

#[cfg(test)]
mod tests;
