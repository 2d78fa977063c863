//! Ironic's PATCH rules for node attributes beyond the first API:
//! which fields a PATCH may touch (Ironic's `PATCH_ALLOWED_FIELDS`, with its
//! "Cannot patch ..." message), how the [`NodeAttrs`] fields are read back
//! from a patched document, and the update checks of Ironic's conductor
//! (`protected` only in active/rescue, `retired` not in available, reasons
//! only with their flag, `instance_uuid` taken by another instance → 409).
//! Callers: `service::nodes` (create and PATCH).

use serde_json::Value;

use super::{parse_bool, parse_uuid, ServiceError};
use crate::model::{Dict, Node, NodeAttrs};

/// The node fields a PATCH may change, in Ironic's order (its message
/// lists them).
pub const PATCH_ALLOWED: &[&str] = &[
    "automated_clean",
    "bios_interface",
    "boot_interface",
    "chassis_uuid",
    "conductor_group",
    "console_interface",
    "deploy_interface",
    "description",
    "disable_power_off",
    "driver",
    "driver_info",
    "extra",
    "inspect_interface",
    "instance_info",
    "instance_uuid",
    "lessee",
    "maintenance",
    "management_interface",
    "name",
    "network_data",
    "network_interface",
    "owner",
    "power_interface",
    "properties",
    "protected",
    "protected_reason",
    "raid_interface",
    "rescue_interface",
    "resource_class",
    "retired",
    "retired_reason",
    "shard",
    "storage_interface",
    "vendor_interface",
    "parent_node",
    "firmware_interface",
];

/// Ironic's `_NODE_DESCRIPTION_MAX_LENGTH`.
const DESCRIPTION_MAX: usize = 4096;
/// The longest owner, lessee, shard, group or reason kept.
const STRING_MAX: usize = 255;

/// Refuse a PATCH that touches a field outside [`PATCH_ALLOWED`], as
/// Ironic's `patch_validate_allowed_fields`, and an over-long description.
pub fn check_paths(ops: &Value) -> Result<(), ServiceError> {
    if let Some(path) = crate::patch::first_disallowed(ops, PATCH_ALLOWED) {
        return Err(ServiceError::Invalid(format!(
            "Cannot patch {}. Only the following can be updated: {}",
            path.chars().take(128).collect::<String>(),
            PATCH_ALLOWED.join(", ")
        )));
    }
    for op in ops.as_array().into_iter().flatten() {
        if op["path"] == "/description" && op["op"] != "remove" {
            if let Some(d) = op["value"].as_str() {
                if d.chars().count() > DESCRIPTION_MAX {
                    return Err(ServiceError::Invalid(format!(
                        "Cannot update node with description exceeding {DESCRIPTION_MAX} characters"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The `parent_node` values a PATCH sets (to resolve to UUIDs first).
pub fn parent_values(ops: &Value) -> Vec<String> {
    ops.as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["path"] == "/parent_node" && op["op"] != "remove")
        .filter_map(|op| op["value"].as_str().map(str::to_owned))
        .collect()
}

/// `ops` with each `parent_node` value replaced by `resolved` (name → UUID).
pub fn with_parents(ops: &Value, resolved: &[(String, String)]) -> Value {
    let mut ops = ops.clone();
    for op in ops.as_array_mut().into_iter().flatten() {
        if op["path"] == "/parent_node" {
            if let Some((_, uuid)) = resolved.iter().find(|(k, _)| op["value"] == k.as_str()) {
                op["value"] = Value::String(uuid.clone());
            }
        }
    }
    ops
}

fn string(doc: &Dict, k: &str, max: usize) -> Result<Option<String>, ServiceError> {
    match doc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: longer than {max} characters."
        ))),
        Some(other) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: {} is not of type 'string'",
            crate::service::shown(other)
        ))),
    }
}

fn flag(doc: &Dict, k: &str) -> Result<bool, ServiceError> {
    match doc.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => parse_bool(k, v),
    }
}

/// Read the [`NodeAttrs`] fields (and `chassis_uuid`) back from `doc`.
pub fn read_back(attrs: &mut NodeAttrs, doc: &Dict) -> Result<(), ServiceError> {
    attrs.owner = string(doc, "owner", STRING_MAX)?;
    attrs.lessee = string(doc, "lessee", STRING_MAX)?;
    attrs.description = string(doc, "description", DESCRIPTION_MAX)?;
    attrs.protected = flag(doc, "protected")?;
    attrs.protected_reason = string(doc, "protected_reason", STRING_MAX)?;
    attrs.retired = flag(doc, "retired")?;
    attrs.retired_reason = string(doc, "retired_reason", STRING_MAX)?;
    attrs.disable_power_off = flag(doc, "disable_power_off")?;
    attrs.shard = string(doc, "shard", STRING_MAX)?;
    let group = string(doc, "conductor_group", STRING_MAX)?.unwrap_or_default();
    if !group
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(ServiceError::Invalid(format!(
            "Invalid conductor_group: '{}' does not match '^[a-zA-Z0-9_\\-\\.]*$'",
            group.chars().take(64).collect::<String>()
        )));
    }
    attrs.conductor_group = group.to_ascii_lowercase();
    attrs.parent_node = string(doc, "parent_node", 36)?;
    attrs.network_data = match doc.get("network_data") {
        None | Some(Value::Null) => Dict::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(ServiceError::Invalid(format!(
                "Invalid network_data: {} is not of type 'object'",
                crate::service::shown(other)
            )))
        }
    };
    if let Some(c) = string(doc, "chassis_uuid", 36)? {
        let c = parse_uuid(&c)?;
        return Err(ServiceError::Invalid(format!(
            "Chassis {c} could not be found."
        )));
    }
    Ok(())
}

/// Ironic's NodeProtected (403) for undeploy, rebuild and delete.
pub fn check_not_protected(node: &Node) -> Result<(), ServiceError> {
    if node.attrs.protected {
        return Err(ServiceError::Forbidden(format!(
            "Node {} is protected and cannot be undeployed, rebuilt or deleted",
            node.uuid
        )));
    }
    Ok(())
}

/// Ironic's destroy_node checks beyond the provision state: an instance
/// (409 unless in maintenance) and protection (403).
pub fn check_deletable(node: &Node) -> Result<(), ServiceError> {
    if let (false, Some(i)) = (node.maintenance, &node.instance_uuid) {
        return Err(ServiceError::Conflict(format!(
            "Node {} is associated with instance {i}.",
            node.uuid
        )));
    }
    check_not_protected(node)
}

/// Ironic's conductor checks on an update from `before` to `node`.
pub fn check_update(before: &Node, node: &mut Node) -> Result<(), ServiceError> {
    let (old, new) = (&before.attrs, &mut node.attrs);
    if new.protected != old.protected {
        if !new.protected {
            new.protected_reason = None;
        } else if !["active", "rescue"].contains(&node.provision_state.as_str()) {
            return Err(ServiceError::Conflict(format!(
                "Node {} can only be made protected in provision states 'active' or 'rescue', the current state is '{}'",
                node.uuid, node.provision_state
            )));
        }
    }
    if new.protected_reason != old.protected_reason
        && new.protected_reason.is_some()
        && !new.protected
    {
        return Err(ServiceError::Invalid(
            "The protected_reason field can only be set when protected is True".into(),
        ));
    }
    if new.retired != old.retired {
        if !new.retired {
            new.retired_reason = None;
        } else if node.provision_state == "available" {
            return Err(ServiceError::Conflict(format!(
                "Node {} can not have 'retired' set in provision state 'available', the current state is '{}'",
                node.uuid, node.provision_state
            )));
        }
    }
    if new.retired_reason != old.retired_reason && new.retired_reason.is_some() && !new.retired {
        return Err(ServiceError::Invalid(
            "The retired_reason field can only be set when retired is True".into(),
        ));
    }
    if new.parent_node.as_deref() == Some(node.uuid.as_str()) {
        return Err(ServiceError::Invalid(format!(
            "Node {} cannot be its own parent_node.",
            node.uuid
        )));
    }
    if let Some(i) = &node.instance_uuid {
        let i = parse_uuid(i)?;
        if let Some(had) = before.instance_uuid.as_ref().filter(|had| **had != i) {
            // Ironic's NodeAssociated: how nova's build sees a taken node.
            return Err(ServiceError::Conflict(format!(
                "Node {} is associated with instance {had}.",
                node.uuid
            )));
        }
        node.instance_uuid = Some(i);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
