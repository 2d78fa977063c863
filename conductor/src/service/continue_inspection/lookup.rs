//! The ramdisk's data checked against Ironic's schema, and Ironic's
//! inspection lookup: the node a `POST /v1/continue_inspection` is for, by
//! `node_uuid`, the inventory's MACs (through ports) and the BMC
//! addresses cached while nodes wait (loopback never: many nodes share
//! it). Every miss or disagreement is the same 404, its reason logged.
//!
//! Callers: [`super`] (`Conductor::continue_inspection`), `api::inspection`
//! ([`parse_body`]), the provision start ([`bmc_addresses`]).

use serde_json::Value;

use super::LOOKUP_CACHE_KEY;
use crate::model::{Dict, Node};
use crate::provision::State;
use crate::service::{Conductor, ServiceError};

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
        return Err(not_of_type(&body, "'object'"));
    };
    let inventory = match plugin_data.remove("inventory") {
        None => return Err(schema_error("'inventory' is a required property")),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(not_of_type(&other, "'object'")),
    };
    for key in ["bmc_address", "bmc_v6address"] {
        match inventory.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => return Err(not_of_type(other, "'string', 'null'")),
        }
    }
    check_interfaces(inventory.get("interfaces"))?;
    Ok(RamdiskData {
        inventory,
        plugin_data,
    })
}

/// `inventory.interfaces`: a non-empty array of objects, each with a
/// string `mac_address`.
fn check_interfaces(ifaces: Option<&Value>) -> Result<(), ServiceError> {
    let ifaces = match ifaces {
        None => return Err(schema_error("'interfaces' is a required property")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(not_of_type(other, "'array'")),
    };
    if ifaces.is_empty() {
        return Err(schema_error("[] should be non-empty"));
    }
    for i in ifaces {
        let Value::Object(m) = i else {
            return Err(not_of_type(i, "'object'"));
        };
        match m.get("mac_address") {
            Some(Value::String(_)) => {}
            None => return Err(schema_error("'mac_address' is a required property")),
            Some(other) => return Err(not_of_type(other, "'string'")),
        }
    }
    Ok(())
}

/// jsonschema's type error, as Ironic words it.
fn not_of_type(v: &Value, types: &str) -> ServiceError {
    schema_error(&format!("{} is not of type {types}", type_name(v)))
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
        .filter_map(|m| crate::service::normalize_mac(m).ok())
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
pub(super) fn not_found(why: &str) -> ServiceError {
    tracing::warn!(why, "continue_inspection refused");
    ServiceError::NotFound
}

/// Do `node`'s cached lookup addresses include one of `bmcs`?
fn has_bmc(node: &Node, bmcs: &[String]) -> bool {
    node.driver_internal_info
        .get(LOOKUP_CACHE_KEY)
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|x| bmcs.iter().any(|b| b == x))
        })
}

impl Conductor {
    /// Ironic's inspection lookup of `data`'s node: by `node_uuid`, then
    /// the MACs (through ports), then the BMC addresses cached on nodes in
    /// `inspect wait`; every disagreement or miss is the same 404.
    pub(super) async fn lookup_for_inspection(
        &self,
        data: &RamdiskData,
        node_uuid: Option<&str>,
    ) -> Result<Node, ServiceError> {
        let macs = inventory_macs(&data.inventory);
        let bmcs = inventory_bmcs(&data.inventory);
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
            node = self.lookup_by_macs(&macs, node).await?;
        }
        if node
            .as_ref()
            .is_some_and(|n| n.provision_state != State::InspectWait.as_str())
        {
            return Err(not_found("the node is not in inspect wait"));
        }
        if !bmcs.is_empty() {
            node = self.lookup_by_bmc(&bmcs, node).await?;
        }
        node.ok_or_else(|| not_found("no node matches the MACs or BMC addresses"))
    }

    /// The node whose ports have `macs` (one node at most), agreeing with
    /// `known`; `known` when no port has them.
    async fn lookup_by_macs(
        &self,
        macs: &[String],
        known: Option<Node>,
    ) -> Result<Option<Node>, ServiceError> {
        let ports = self.store.list_ports(None).await?;
        let mut owners: Vec<&str> = ports
            .iter()
            .filter(|p| macs.contains(&p.address))
            .map(|p| p.node_uuid.as_str())
            .collect();
        owners.sort_unstable();
        owners.dedup();
        match owners.as_slice() {
            [] => Ok(known),
            [one] if known.as_ref().is_some_and(|n| n.uuid != *one) => {
                Err(not_found("the MACs belong to another node"))
            }
            [one] => Ok(Some(self.store.get_node(one).await?)),
            _ => Err(not_found("the MACs belong to several nodes")),
        }
    }

    /// The waiting node whose BMC address is one of `bmcs`, agreeing with
    /// `known`; `known` when none has them.
    async fn lookup_by_bmc(
        &self,
        bmcs: &[String],
        known: Option<Node>,
    ) -> Result<Option<Node>, ServiceError> {
        let by_bmc: Vec<Node> = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| n.provision_state == State::InspectWait.as_str() && has_bmc(n, bmcs))
            .collect();
        match (known, by_bmc.as_slice()) {
            (Some(n), found) if !found.is_empty() && !found.iter().any(|f| f.uuid == n.uuid) => {
                Err(not_found(
                    "the MACs and the BMC address point to different nodes",
                ))
            }
            (None, [one]) => Ok(Some(one.clone())),
            (None, [_, _, ..]) => Err(not_found(
                "several nodes have this BMC address and no port matches",
            )),
            (known, _) => Ok(known),
        }
    }
}
