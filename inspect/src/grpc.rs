//! `inspect.v1.InspectService` over [`Inspections`], and the one mapping of
//! the service's errors to gRPC status codes.
//!
//! Callers: [`crate::run`] serves it; the conductor's inspect interface
//! (`conductor::provision::inspect_grpc`) calls it.

use std::pin::Pin;

use pb::inspect_service_server::InspectService;
use porthole_proto::inspect::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::agent::{NodeNow, Port};
use crate::inspections::{InspectError, Inspections};
use crate::inspector::InspectorError;

/// The gRPC face of the service's inspections.
pub struct InspectApi {
    inspections: Inspections,
}

impl InspectApi {
    pub fn new(inspections: Inspections) -> Self {
        Self { inspections }
    }
}

/// Every [`InspectError`] to its status, exhaustively.
pub fn status_of(e: &InspectError) -> Status {
    let msg = e.to_string();
    match e {
        InspectError::InspectorDisabled | InspectError::AgentUnavailable => {
            Status::failed_precondition(msg)
        }
        InspectError::UnknownInterface(_) | InspectError::BadUuid(_) => {
            Status::invalid_argument(msg)
        }
        InspectError::AlreadyWaiting(_)
        | InspectError::NotWaiting { .. }
        | InspectError::NotAgent { .. } => Status::failed_precondition(msg),
        InspectError::NotFound(_) => Status::not_found(msg),
        InspectError::Backend(b) => match b {
            // Inspector's answer to what we asked: its 4xx are the
            // request's fault (a node it cannot inspect), not ours.
            InspectorError::Refused { status, .. } if status.is_client_error() => {
                Status::failed_precondition(msg)
            }
            _ => Status::unavailable(msg),
        },
    }
}

/// A request field that must hold a JSON object (empty: `{}`).
fn object(field: &str, raw: &str) -> Result<crate::agent::Dict, Status> {
    if raw.trim().is_empty() {
        return Ok(crate::agent::Dict::new());
    }
    match serde_json::from_str(raw) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Status::invalid_argument(format!(
            "{field} must be a JSON object"
        ))),
        Err(e) => Err(Status::invalid_argument(format!(
            "{field} is not JSON: {e}"
        ))),
    }
}

fn from_pb(p: pb::AgentPort) -> Port {
    Port {
        address: p.address.to_ascii_lowercase(),
        pxe_enabled: p.pxe_enabled,
        client_id: Some(p.client_id).filter(|c| !c.is_empty()),
    }
}

fn to_pb(p: Port) -> pb::AgentPort {
    pb::AgentPort {
        address: p.address,
        pxe_enabled: p.pxe_enabled,
        client_id: p.client_id.unwrap_or_default(),
    }
}

type Watch = Pin<Box<dyn Stream<Item = Result<pb::Inspection, Status>> + Send>>;

#[tonic::async_trait]
impl InspectService for InspectApi {
    async fn validate_inspection(
        &self,
        req: Request<pb::ValidateInspectionRequest>,
    ) -> Result<Response<pb::ValidateInspectionResponse>, Status> {
        self.inspections
            .validate(&req.into_inner().interface)
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::ValidateInspectionResponse {}))
    }

    async fn start_inspection(
        &self,
        req: Request<pb::StartInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        let r = req.into_inner();
        self.inspections
            .start(&r.node_uuid, &r.interface)
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn get_inspection(
        &self,
        req: Request<pb::GetInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        self.inspections
            .get(&req.into_inner().node_uuid)
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn abort_inspection(
        &self,
        req: Request<pb::AbortInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        self.inspections
            .abort(&req.into_inner().node_uuid)
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn continue_inspection(
        &self,
        req: Request<pb::ContinueInspectionRequest>,
    ) -> Result<Response<pb::ContinueInspectionResponse>, Status> {
        let r = req.into_inner();
        let data = crate::inspections::AgentData {
            inventory: object("inventory_json", &r.inventory_json)?,
            plugin_data: object("plugin_data_json", &r.plugin_data_json)?,
            node: NodeNow {
                uuid: r.node_uuid.clone(),
                properties: object("properties_json", &r.properties_json)?,
                ports: r.ports.into_iter().map(from_pb).collect(),
            },
        };
        let (inspection, outcome) = self
            .inspections
            .continue_agent(&r.node_uuid, data)
            .map_err(|e| status_of(&e))?;
        let o = outcome.unwrap_or_default();
        Ok(Response::new(pb::ContinueInspectionResponse {
            inspection: Some(inspection),
            properties_json: serde_json::Value::Object(o.properties).to_string(),
            add_ports: o.add_ports.into_iter().map(to_pb).collect(),
            delete_ports: o.delete_ports,
            update_ports: o.update_ports.into_iter().map(to_pb).collect(),
            plugin_data_json: serde_json::Value::Object(o.plugin_data).to_string(),
        }))
    }

    type WatchInspectionsStream = Watch;

    /// Every inspection, then each change; a watcher that falls behind
    /// gets every inspection again (so it never misses an outcome).
    async fn watch_inspections(
        &self,
        _: Request<pb::WatchInspectionsRequest>,
    ) -> Result<Response<Watch>, Status> {
        let inspections = self.inspections.clone();
        let (first, rx) = inspections.watch();
        let stream = futures::stream::unfold(
            (first.into_iter(), rx, inspections),
            |(mut pending, mut rx, inspections)| async move {
                loop {
                    if let Some(item) = pending.next() {
                        return Some((Ok(item), (pending, rx, inspections)));
                    }
                    match rx.recv().await {
                        Ok(item) => return Some((Ok(item), (pending, rx, inspections))),
                        Err(RecvError::Lagged(_)) => {
                            let (all, fresh) = inspections.watch();
                            pending = all.into_iter();
                            rx = fresh;
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests;
