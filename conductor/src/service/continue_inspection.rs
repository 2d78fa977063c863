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
//! Callers: `api::inspection` (the endpoint), `service::provision` (the
//! start).

use std::sync::Arc;

use porthole_proto::inspect::v1 as pb;
use serde_json::Value;

use super::{BusyGuard, Conductor, ServiceError};
use crate::db::inventory::Inventory;
use crate::drivers::Kind;
use crate::model::{now, Dict, Node, Port, POWER_OFF, POWER_ON};
use crate::power::{Bmc, Power};
use crate::provision::{Event, State};

/// Where the BMC addresses used for lookup are cached while inspecting
/// (Ironic's key).
pub const LOOKUP_CACHE_KEY: &str = "lookup_bmc_addresses";

/// The inspect interface this module serves.
pub const AGENT: &str = "agent";

/// What the ramdisk posted, checked against Ironic's schema.
#[derive(Clone, Debug)]
pub struct RamdiskData {
    pub inventory: Dict,
    /// The rest of the body (Ironic's plugin data).
    pub plugin_data: Dict,
}

fn schema_error(msg: &str) -> ServiceError {
    ServiceError::Invalid(format!("Schema error for data: {msg}"))
}

fn type_name(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Ironic's DATA_VALIDATOR: an object with `inventory`, an object whose
/// `interfaces` is a non-empty array of objects with a string
/// `mac_address`; `bmc_address` / `bmc_v6address` strings or null.
pub fn parse_body(body: Value) -> Result<RamdiskData, ServiceError> {
    let Value::Object(mut plugin_data) = body else {
        return Err(schema_error(&format!(
            "{} is not of type 'object'",
            type_name(&body)
        )));
    };
    let inventory = match plugin_data.remove("inventory") {
        None => return Err(schema_error("'inventory' is a required property")),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(schema_error(&format!(
                "{} is not of type 'object'",
                type_name(&other)
            )))
        }
    };
    for key in ["bmc_address", "bmc_v6address"] {
        match inventory.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => {
                return Err(schema_error(&format!(
                    "{} is not of type 'string', 'null'",
                    type_name(other)
                )))
            }
        }
    }
    let ifaces = match inventory.get("interfaces") {
        None => return Err(schema_error("'interfaces' is a required property")),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(schema_error(&format!(
                "{} is not of type 'array'",
                type_name(other)
            )))
        }
    };
    if ifaces.is_empty() {
        return Err(schema_error("[] should be non-empty"));
    }
    for i in ifaces {
        let Value::Object(m) = i else {
            return Err(schema_error(&format!(
                "{} is not of type 'object'",
                type_name(i)
            )));
        };
        match m.get("mac_address") {
            Some(Value::String(_)) => {}
            None => return Err(schema_error("'mac_address' is a required property")),
            Some(other) => {
                return Err(schema_error(&format!(
                    "{} is not of type 'string'",
                    type_name(other)
                )))
            }
        }
    }
    Ok(RamdiskData {
        inventory,
        plugin_data,
    })
}

/// The valid MACs of the inventory's interfaces (invalid ones ignored, as
/// Ironic's lookup does).
fn inventory_macs(inventory: &Dict) -> Vec<String> {
    inventory
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("mac_address").and_then(Value::as_str))
        .filter_map(|m| super::normalize_mac(m).ok())
        .collect()
}

fn inventory_bmcs(inventory: &Dict) -> Vec<String> {
    ["bmc_address", "bmc_v6address"]
        .iter()
        .filter_map(|k| inventory.get(*k).and_then(Value::as_str))
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

/// The BMC addresses in `node`'s driver_info (`*_address`; a URL's host),
/// loopback ones left out as Ironic does (many nodes share them).
pub fn bmc_addresses(node: &Node) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, v) in &node.driver_info {
        let Some(raw) = v.as_str().filter(|_| k.ends_with("_address")) else {
            continue;
        };
        let host = match raw.split_once("//") {
            Some((_, rest)) => rest.split(['/', '?']).next().unwrap_or(rest),
            None => raw,
        };
        let host = match host.rsplit_once(':') {
            // host:port, but not a bare IPv6 address.
            Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[');
        let host = host.split(']').next().unwrap_or(host);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if !host.is_empty() && !loopback && !out.iter().any(|o| o == host) {
            out.push(host.to_owned());
        }
    }
    out
}

/// Why a lookup found nothing usable: logged, never told to the caller.
fn not_found(why: &str) -> ServiceError {
    tracing::warn!(why, "continue_inspection refused");
    ServiceError::NotFound
}

impl Conductor {
    /// Ironic's inspection lookup: by `node_uuid`, then the MACs (through
    /// ports), then the BMC addresses cached on nodes in `inspect wait`;
    /// every disagreement or miss is the same 404.
    async fn lookup_for_inspection(
        &self,
        macs: &[String],
        bmcs: &[String],
        node_uuid: Option<&str>,
    ) -> Result<Node, ServiceError> {
        if macs.is_empty() && bmcs.is_empty() && node_uuid.is_none() {
            return Err(ServiceError::Invalid(
                "No lookup information provided".into(),
            ));
        }
        let mut node = match node_uuid {
            Some(u) => Some(
                self.store
                    .get_node(u)
                    .await
                    .map_err(|_| not_found("no node with that UUID"))?,
            ),
            None => None,
        };
        if !macs.is_empty() {
            let ports = self.store.list_ports(None).await?;
            let mut owners: Vec<&str> = ports
                .iter()
                .filter(|p| macs.contains(&p.address))
                .map(|p| p.node_uuid.as_str())
                .collect();
            owners.sort_unstable();
            owners.dedup();
            match owners.as_slice() {
                [] => {}
                [one] => {
                    if node.as_ref().is_some_and(|n| n.uuid != *one) {
                        return Err(not_found("the MACs belong to another node"));
                    }
                    node = Some(self.store.get_node(one).await?);
                }
                _ => return Err(not_found("the MACs belong to several nodes")),
            }
        }
        if node
            .as_ref()
            .is_some_and(|n| n.provision_state != State::InspectWait.as_str())
        {
            return Err(not_found("the node is not in inspect wait"));
        }
        if !bmcs.is_empty() {
            let by_bmc: Vec<Node> = self
                .store
                .list_nodes()
                .await?
                .into_iter()
                .filter(|n| n.provision_state == State::InspectWait.as_str())
                .filter(|n| {
                    n.driver_internal_info
                        .get(LOOKUP_CACHE_KEY)
                        .and_then(Value::as_array)
                        .is_some_and(|a| {
                            a.iter()
                                .any(|x| x.as_str().is_some_and(|x| bmcs.iter().any(|b| b == x)))
                        })
                })
                .collect();
            match (&node, by_bmc.as_slice()) {
                (Some(n), found)
                    if !found.is_empty() && !found.iter().any(|f| f.uuid == n.uuid) =>
                {
                    return Err(not_found(
                        "the MACs and the BMC address point to different nodes",
                    ))
                }
                (None, [one]) => node = Some(one.clone()),
                (None, [_, _, ..]) => {
                    return Err(not_found(
                        "several nodes have this BMC address and no port matches",
                    ))
                }
                _ => {}
            }
        }
        node.ok_or_else(|| not_found("no node matches the MACs or BMC addresses"))
    }

    /// Ironic's `POST /v1/continue_inspection`: the node the data is for,
    /// moved to `inspecting` with the inspect service's result being
    /// applied in the background; the node as it was found.
    pub async fn continue_inspection(
        self: &Arc<Self>,
        data: RamdiskData,
        node_uuid: Option<&str>,
    ) -> Result<Node, ServiceError> {
        let macs = inventory_macs(&data.inventory);
        let bmcs = inventory_bmcs(&data.inventory);
        let found = self.lookup_for_inspection(&macs, &bmcs, node_uuid).await?;
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
        self.inspection_power(&node, Power::Off)
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

    /// The start of an `agent` inspection, in the provision task (the node
    /// locked): the lookup addresses cached; the node powered off, set to
    /// boot from PXE once (its management interface), powered on.
    pub(crate) async fn start_agent_inspection(&self, node: &Node) -> Result<(), String> {
        let addrs: Vec<Value> = bmc_addresses(node).into_iter().map(Value::String).collect();
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                match addrs.is_empty() {
                    true => n.driver_internal_info.remove(LOOKUP_CACHE_KEY),
                    false => n
                        .driver_internal_info
                        .insert(LOOKUP_CACHE_KEY.into(), Value::Array(addrs)),
                };
                Ok::<_, ServiceError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        let start = async {
            self.inspection_power(node, Power::Off).await?;
            if node.interface(Kind::Management) != "fake" {
                Bmc::for_management(node, &self.power)
                    .map_err(|e| e.to_string())?
                    .set_boot_device("pxe", false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.inspection_power(node, Power::On).await
        };
        start
            .await
            .map_err(|e| format!("unable to start inspection: {e}"))
    }

    /// An `agent` inspection that ended without its data (an abort, the
    /// inspect_wait_timeout), the node locked by the caller: as Ironic's
    /// abort, the lookup addresses go and the node is powered off; with
    /// `tell_service` the inspect service's record is aborted too (a
    /// timeout; the abort verb asked it already). Failures are logged: the
    /// node has failed already.
    pub(crate) async fn clean_up_agent_inspection(&self, node: &Node, tell_service: bool) {
        if node.interface(Kind::Inspect) != AGENT {
            return;
        }
        if tell_service {
            let iface = self.interfaces.for_node(node).inspect;
            if let Err(e) = iface.abort(node).await {
                tracing::warn!(node = %node.uuid, error = %e, "cannot abort the inspect service's record");
            }
        }
        let cleared = self
            .store
            .modify_node(&node.uuid, |n: &mut Node| {
                n.driver_internal_info.remove(LOOKUP_CACHE_KEY);
                Ok::<_, ServiceError>(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(node = %node.uuid, error = %e, "cannot clear the lookup addresses");
        }
        if let Err(e) = self.inspection_power(node, Power::Off).await {
            tracing::warn!(node = %node.uuid, error = %e, "cannot power off the node after its inspection ended");
        }
    }

    /// Drive `node` to `want` and wait until its BMC says so (the node is
    /// locked by the caller); power_state is recorded.
    async fn inspection_power(&self, node: &Node, want: Power) -> Result<(), String> {
        if node.interface(Kind::Power) != "fake" {
            let bmc = Bmc::for_node(node, &self.power).map_err(|e| e.to_string())?;
            bmc.set_power(want).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + self.timing.state_timeout;
            loop {
                if bmc.power_state().await.map_err(|e| e.to_string())? == want {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "the BMC did not report {} within {:?}",
                        want.as_ironic(),
                        self.timing.state_timeout
                    ));
                }
                tokio::time::sleep(self.timing.poll_interval).await;
            }
        }
        let p = match want {
            Power::On => POWER_ON,
            Power::Off => POWER_OFF,
        };
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                n.power_state = Some(p.into());
                n.target_power_state = None;
                Ok::<_, ServiceError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(node = %node.uuid, state = p, "inspection power action done");
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
