//! The built-in `agent` inspect interface, the conductor's side: the start
//! of an inspection (lookup addresses cached, the node booted from PXE
//! through its management interface and powered on), Ironic's `POST
//! /v1/continue_inspection` (the body checked against Ironic's schema, the
//! node looked up by MACs, BMC address or UUID, the data forwarded to the
//! inspect service), and the result applied: properties, ports, the stored
//! inventory, power off, `manageable`.
//!
//! ```text
//!  inspecting ──start_agent_inspection──▶ cache BMC addresses, power off,
//!                                         boot pxe (once), power on
//!             ──StartInspection──▶ inspect wait (unlocked)
//!  POST /v1/continue_inspection ──▶ schema ──▶ lookup ──▶ lock ──▶ inspect wait + agent?
//!      ──ContinueInspection──▶ FINISHED(outcome) / FAILED(reason)
//!      ──▶ resume: inspecting ──▶ 202 ──background, locked──▶ apply, power off
//!      ──▶ manageable (or inspect failed, last_error)
//! ```
//!
//! The endpoint needs no credentials (the ramdisk has none), so a request
//! that is not for a node waiting for exactly this is refused before
//! anything changes: 400 for a body that is not Ironic's inventory, 404
//! alike for no node, several nodes, a node in another state or with
//! another inspect interface (as Ironic, which discloses nothing), 409
//! while the node is locked, 503 while the inspect service cannot be
//! reached. The inspect service computes; only this module writes.
//!
//! Here: the endpoint's path and the answer applied; `lookup` (the schema,
//! Ironic's lookup), `power` (the start, the clean up, power actions).
//! Callers: `api::inspection` (the endpoint), `service::provision` (start,
//! abort), `periodic` (timeout).

use std::sync::Arc;

use porthole_proto::inspect::v1 as pb;
use serde_json::Value;

use super::{BusyGuard, Conductor, ServiceError};
use crate::db::inventory::Inventory;
use crate::drivers::Kind;
use crate::model::{now, Dict, Node, Port};
use crate::power::Power;
use crate::provision::{Event, State};

/// Where the BMC addresses used for lookup are cached while inspecting
/// (Ironic's key).
pub const LOOKUP_CACHE_KEY: &str = "lookup_bmc_addresses";

/// The inspect interface this module serves.
pub const AGENT: &str = "agent";

mod lookup;
mod power;

use lookup::not_found;
pub use lookup::{bmc_addresses, parse_body, RamdiskData};

impl Conductor {
    /// Ironic's `POST /v1/continue_inspection`: the node the data is for,
    /// moved to `inspecting` with the inspect service's result being
    /// applied in the background; the node as it was found.
    pub async fn continue_inspection(
        self: &Arc<Self>,
        data: RamdiskData,
        node_uuid: Option<&str>,
    ) -> Result<Node, ServiceError> {
        let found = self.lookup_for_inspection(&data, node_uuid).await?;
        if found.interface(Kind::Inspect) != AGENT {
            return Err(not_found("the node's inspect interface is not agent"));
        }
        let Some(client) = self.interfaces.inspect_service.clone() else {
            return Err(not_found("no inspect service is configured"));
        };
        let guard = self.reserve(&found.uuid)?;
        let node = self.store.get_node(&found.uuid).await?;
        if node.provision_state != State::InspectWait.as_str() {
            return Err(not_found("the node left inspect wait meanwhile"));
        }
        let ports = self.store.list_ports(Some(&node.uuid)).await?;
        let req = pb::ContinueInspectionRequest {
            node_uuid: node.uuid.clone(),
            inventory_json: Value::Object(data.inventory.clone()).to_string(),
            plugin_data_json: Value::Object(data.plugin_data).to_string(),
            properties_json: Value::Object(node.properties.clone()).to_string(),
            ports: ports.iter().map(agent_port).collect(),
        };
        let reply = match client.continue_inspection(req).await {
            Ok(r) => r,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                tracing::warn!(node = %node.uuid, error = %s.message(), "the inspect service has no waiting agent inspection of the node");
                return Err(ServiceError::NotFound);
            }
            Err(s) => return Err(ServiceError::Unavailable(client.describe(&s))),
        };
        self.advance(&node.uuid, Event::Resume, None).await?;
        let this = self.clone();
        let inventory = Value::Object(data.inventory);
        let span = tracing::info_span!("continue_inspection", node = %node.uuid);
        self.tasks.spawn(tracing::Instrument::instrument(
            async move { this.finish_agent_inspection(guard, reply, inventory).await },
            span,
        ));
        Ok(node)
    }

    /// Apply the inspect service's answer to the locked node: `manageable`
    /// with its properties, ports and inventory, or `inspect failed`.
    async fn finish_agent_inspection(
        self: Arc<Self>,
        guard: BusyGuard,
        reply: pb::ContinueInspectionResponse,
        inventory: Value,
    ) {
        let uuid = guard.uuid.clone();
        let state = reply.inspection.as_ref().map(|i| i.state());
        let result = match state {
            Some(pb::InspectionState::Finished) => self.apply(&uuid, &reply, inventory).await,
            _ => Err(format!(
                "Failed to finish inspection: {}",
                reply.inspection.map(|i| i.error).unwrap_or_default()
            )),
        };
        let cleared = self
            .store
            .modify_node(&uuid, |n: &mut Node| {
                n.driver_internal_info.remove(LOOKUP_CACHE_KEY);
                Ok::<_, ServiceError>(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "cannot clear the lookup addresses");
        }
        let (event, error) = match result {
            Ok(()) => (Event::Done, None),
            Err(e) => (Event::Fail, Some(e)),
        };
        if let Err(e) = self.advance(&uuid, event, error).await {
            tracing::warn!(error = %e, "cannot record the end of the inspection");
        }
        drop(guard);
    }

    /// Properties, ports, inventory, then power off.
    async fn apply(
        &self,
        uuid: &str,
        reply: &pb::ContinueInspectionResponse,
        inventory: Value,
    ) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("Failed to finish inspection: {e}");
        let props: Dict = serde_json::from_str(&reply.properties_json).map_err(|e| fail(&e))?;
        let plugin_data: Value =
            serde_json::from_str(&reply.plugin_data_json).map_err(|e| fail(&e))?;
        self.store
            .modify_node(uuid, move |n: &mut Node| {
                n.properties.extend(props);
                Ok::<_, ServiceError>(())
            })
            .await
            .map_err(|e| fail(&e))?;
        self.apply_ports(uuid, reply).await.map_err(|e| fail(&e))?;
        self.store
            .put_inventory(
                uuid,
                Inventory {
                    inventory,
                    plugin_data,
                },
            )
            .await
            .map_err(|e| fail(&e))?;
        tracing::info!(node = %uuid, "inspection data stored");
        let node = self.store.get_node(uuid).await.map_err(|e| fail(&e))?;
        self.power_locked(&node, Power::Off)
            .await
            .map_err(|e| format!("Inspection clean up failed: unable to power off the node: {e}"))
    }

    async fn apply_ports(
        &self,
        uuid: &str,
        reply: &pb::ContinueInspectionResponse,
    ) -> Result<(), ServiceError> {
        let ports = self.store.list_ports(Some(uuid)).await?;
        for p in ports
            .iter()
            .filter(|p| reply.delete_ports.contains(&p.address))
        {
            tracing::info!(port = %p.uuid, mac = %p.address, "deleting a port the inventory does not keep (keep_ports)");
            self.store.delete_port(&p.uuid).await?;
        }
        for u in &reply.update_ports {
            let Some(p) = ports.iter().find(|p| p.address == u.address) else {
                continue;
            };
            let (pxe, client_id) = (u.pxe_enabled, u.client_id.clone());
            self.store
                .modify_port(&p.uuid, move |p: &mut Port| {
                    p.pxe_enabled = pxe;
                    if !client_id.is_empty() {
                        p.extra.insert("client-id".into(), client_id.into());
                    }
                    Ok::<_, ServiceError>(())
                })
                .await?;
        }
        for a in &reply.add_ports {
            let mut extra = Dict::new();
            if !a.client_id.is_empty() {
                extra.insert("client-id".into(), a.client_id.clone().into());
            }
            let port = Port {
                uuid: uuid::Uuid::new_v4().to_string(),
                address: a.address.clone(),
                node_uuid: uuid.to_owned(),
                extra,
                pxe_enabled: a.pxe_enabled,
                created_at: now(),
                updated_at: None,
                internal_info: Dict::new(),
                local_link_connection: Dict::new(),
                physical_network: None,
                portgroup_uuid: None,
                is_smartnic: false,
                name: None,
            };
            match self.store.insert_port(&port).await {
                Ok(()) => {
                    tracing::info!(mac = %port.address, pxe = port.pxe_enabled, "port created from the inventory")
                }
                Err(crate::db::DbError::Duplicate(e)) => {
                    tracing::info!(mac = %port.address, error = %e, "a port with this MAC exists already")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn agent_port(p: &Port) -> pb::AgentPort {
    pb::AgentPort {
        address: p.address.clone(),
        pxe_enabled: p.pxe_enabled,
        client_id: p
            .extra
            .get("client-id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

// Tests: `provision::inspect_grpc::tests::agent` (with the in-memory
// inspect service).
