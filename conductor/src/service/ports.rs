//! Ports: create, PATCH (JSON Patch on Ironic's patchable fields) and
//! delete, with Ironic's checks: booleans as Ironic reads them (`"false"`
//! is false), MAC addresses normalised, `local_link_connection` keys and
//! required members, `physical_network` at most 64 characters, a portgroup
//! on the same node, no PATCH while the node is `inspecting`.
//!
//! Callers: the port handlers in `api::ports`.

use serde_json::{json, Value};

use super::{normalize_mac, parse_bool, parse_uuid, shown, Conductor, ServiceError};
use crate::model::{now, Dict, Port, Portgroup};
use crate::patch;

/// The port fields a PATCH may change (Ironic's `PATCH_ALLOWED_FIELDS`,
/// less those this conductor does not keep).
pub const PATCH_ALLOWED: &[&str] = &[
    "address",
    "extra",
    "is_smartnic",
    "local_link_connection",
    "node_uuid",
    "physical_network",
    "portgroup_uuid",
    "pxe_enabled",
    "name",
];

/// Keys a `local_link_connection` may have.
const LLC_KEYS: &[&str] = &[
    "port_id",
    "switch_id",
    "hostname",
    "switch_info",
    "network_type",
    "vtep-logical-switch",
    "vtep-physical-switch",
];

impl Conductor {
    pub async fn create_port(&self, body: &Dict) -> Result<Port, ServiceError> {
        for k in body.keys() {
            if !PATCH_ALLOWED.contains(&k.as_str()) && k != "uuid" && k != "node_ident" {
                return Err(ServiceError::Invalid(format!(
                    "Unknown attribute for argument port: {k}"
                )));
            }
        }
        if !body.contains_key("address") {
            return Err(ServiceError::Invalid(
                "Mandatory field missing: address.".into(),
            ));
        }
        let node_ident = body
            .get("node_uuid")
            .or_else(|| body.get("node_ident"))
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::Invalid("Mandatory field missing: node_uuid.".into()))?;
        let node = self.store.get_node(node_ident).await?;
        let uuid = match body.get("uuid").and_then(Value::as_str) {
            Some(u) => parse_uuid(u)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut port = Port {
            uuid,
            address: String::new(),
            node_uuid: node.uuid.clone(),
            extra: Dict::new(),
            pxe_enabled: true,
            created_at: now(),
            updated_at: None,
            internal_info: Dict::new(),
            local_link_connection: Dict::new(),
            physical_network: None,
            portgroup_uuid: None,
            is_smartnic: false,
            name: None,
        };
        let mut doc = editable(&port);
        for (k, v) in body {
            if k != "uuid" && k != "node_ident" {
                doc.insert(k.clone(), v.clone());
            }
        }
        doc.insert("node_uuid".into(), Value::String(node.uuid.clone()));
        read_back(&mut port, &doc)?;
        self.check_portgroup(&port).await?;
        self.store.insert_port(&port).await?;
        Ok(port)
    }

    pub async fn patch_port(&self, ident: &str, ops: &Value) -> Result<Port, ServiceError> {
        if let Some(path) = patch::first_disallowed(ops, PATCH_ALLOWED) {
            return Err(ServiceError::Invalid(format!(
                "Cannot patch {}. Only the following can be updated: {}",
                path.chars().take(128).collect::<String>(),
                PATCH_ALLOWED.join(", ")
            )));
        }
        let current = self.store.get_port(ident).await?;
        let node = self.store.get_node(&current.node_uuid).await?;
        if node.provision_state == "inspecting" {
            return Err(ServiceError::Conflict(format!(
                "Cannot update port \"{}\" on \"{}\" while it is in state \"inspecting\".",
                current.uuid, node.uuid
            )));
        }
        // Dry run first, for the checks that need the store (a new node or
        // portgroup); the write below re-applies to the row under its lock.
        let mut trial = current.clone();
        apply_patch(&mut trial, ops)?;
        if trial.node_uuid != current.node_uuid {
            let to = self
                .store
                .get_node(&trial.node_uuid)
                .await
                .map_err(|e| match e {
                    crate::db::DbError::NotFound { kind, ident } => {
                        ServiceError::Invalid(format!("{kind} {ident} could not be found."))
                    }
                    other => other.into(),
                })?;
            if current.internal_info.contains_key(super::vifs::VIF_KEY) {
                return Err(ServiceError::Conflict(format!(
                    "Cannot move port {} to node {} while a VIF is attached to it.",
                    current.uuid, to.uuid
                )));
            }
        }
        self.check_portgroup(&trial).await?;
        let ops = ops.clone();
        self.store
            .modify_port(&current.uuid, move |p: &mut Port| apply_patch(p, &ops))
            .await
    }

    pub async fn delete_port(&self, ident: &str) -> Result<(), ServiceError> {
        let port = self.store.get_port(ident).await?;
        self.store.delete_port(&port.uuid).await?;
        Ok(())
    }

    /// A port's portgroup must exist and be on the port's node.
    async fn check_portgroup(&self, port: &Port) -> Result<(), ServiceError> {
        let Some(pg) = &port.portgroup_uuid else {
            return Ok(());
        };
        let group: Portgroup = match self.store.get_doc(pg).await {
            Ok(g) => g,
            Err(crate::db::DbError::NotFound { .. }) => {
                return Err(ServiceError::Invalid(format!(
                    "Portgroup {pg} could not be found."
                )))
            }
            Err(e) => return Err(e.into()),
        };
        if group.node_uuid != port.node_uuid {
            return Err(ServiceError::Invalid(format!(
                "Port can not be added to portgroup {} which belongs to another node.",
                group.uuid
            )));
        }
        Ok(())
    }
}

/// Apply a JSON Patch to `port`, checking the result.
fn apply_patch(port: &mut Port, ops: &Value) -> Result<(), ServiceError> {
    let mut doc = Value::Object(editable(port));
    patch::apply(&mut doc, ops)?;
    let Value::Object(doc) = doc else {
        unreachable!("patched an object")
    };
    read_back(port, &doc)
}

/// The client-editable attributes of `port` as a JSON object.
fn editable(p: &Port) -> Dict {
    let v = json!({
        "address": p.address,
        "node_uuid": p.node_uuid,
        "extra": p.extra,
        "pxe_enabled": p.pxe_enabled,
        "local_link_connection": p.local_link_connection,
        "physical_network": p.physical_network,
        "portgroup_uuid": p.portgroup_uuid,
        "is_smartnic": p.is_smartnic,
        "name": p.name,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a json! object"),
    }
}

fn opt_string(doc: &Dict, k: &str, max: usize) -> Result<Option<String>, ServiceError> {
    match doc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: longer than {max} characters."
        ))),
        Some(other) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: {} is not of type 'string'",
            shown(other)
        ))),
    }
}

fn object(doc: &Dict, k: &str) -> Result<Dict, ServiceError> {
    match doc.get(k) {
        None | Some(Value::Null) => Ok(Dict::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: {} is not of type 'object'",
            shown(other)
        ))),
    }
}

/// Copy the edited attributes back into `port`, checking each.
fn read_back(port: &mut Port, doc: &Dict) -> Result<(), ServiceError> {
    let address = opt_string(doc, "address", 64)?
        .ok_or_else(|| ServiceError::Invalid("address cannot be removed.".into()))?;
    port.address = normalize_mac(&address)?;
    let node = opt_string(doc, "node_uuid", 36)?
        .ok_or_else(|| ServiceError::Invalid("node_uuid cannot be removed.".into()))?;
    port.node_uuid = parse_uuid(&node)?;
    port.extra = object(doc, "extra")?;
    port.pxe_enabled = match doc.get("pxe_enabled") {
        // Ironic's default for a missing or removed pxe_enabled.
        None | Some(Value::Null) => true,
        Some(v) => parse_bool("pxe_enabled", v)?,
    };
    port.is_smartnic = match doc.get("is_smartnic") {
        None | Some(Value::Null) => false,
        Some(v) => parse_bool("is_smartnic", v)?,
    };
    port.physical_network = opt_string(doc, "physical_network", 64)?;
    if port.physical_network.as_deref() == Some("") {
        return Err(ServiceError::Invalid(
            "A non-empty value is required when setting physical_network".into(),
        ));
    }
    port.portgroup_uuid = opt_string(doc, "portgroup_uuid", 36)?
        .map(|u| parse_uuid(&u))
        .transpose()?;
    port.name = opt_string(doc, "name", 255)?;
    port.local_link_connection = object(doc, "local_link_connection")?;
    check_llc(&port.local_link_connection, port.is_smartnic)?;
    Ok(())
}

/// Ironic's `local_link_connection` schema: known keys, string values, and
/// `port_id` with `switch_id` (or `hostname` on a smart NIC) unless empty or
/// `network_type` is `unmanaged`.
fn check_llc(llc: &Dict, smartnic: bool) -> Result<(), ServiceError> {
    let bad = |why: String| ServiceError::Invalid(format!("Invalid local_link_connection: {why}"));
    for (k, v) in llc {
        if !LLC_KEYS.contains(&k.as_str()) {
            return Err(bad(format!(
                "Additional properties are not allowed ('{}' was unexpected)",
                k.chars().take(64).collect::<String>()
            )));
        }
        if !v.is_string() {
            return Err(bad(format!("{} is not of type 'string'", shown(v))));
        }
    }
    if llc.is_empty() {
        return Ok(());
    }
    match llc.get("network_type").and_then(Value::as_str) {
        Some("unmanaged") => return Ok(()),
        Some("managed") | None => {}
        Some(other) => {
            return Err(bad(format!(
                "'{}' is not one of ['managed', 'unmanaged']",
                other.chars().take(64).collect::<String>()
            )))
        }
    }
    let need: &[&str] = if smartnic {
        &["port_id", "hostname"]
    } else {
        &["port_id", "switch_id"]
    };
    if let Some(missing) = need.iter().find(|k| !llc.contains_key(**k)) {
        return Err(bad(format!("'{missing}' is a required property")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
