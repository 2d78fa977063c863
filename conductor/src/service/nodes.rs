//! Node create, PATCH and delete, with Ironic's checks.
//!
//! Callers: the node handlers in `api::nodes`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{node_attrs, parse_uuid, Conductor, ServiceError};
use crate::drivers::Kind;
use crate::model::{now, Dict, Node, NodeAttrs, ATTRS_WRITABLE, MASK};
use crate::patch;

/// Attributes a client may set on create or PATCH.
const WRITABLE: &[&str] = &[
    "uuid",
    "name",
    "driver",
    "driver_info",
    "properties",
    "instance_info",
    "instance_uuid",
    "extra",
    "resource_class",
    "maintenance",
    "maintenance_reason",
    "automated_clean",
];
/// Is `k` an attribute a client may set: [`WRITABLE`], an `<kind>_interface`
/// or one of the [`NodeAttrs`] fields?
fn writable(k: &str) -> bool {
    WRITABLE.contains(&k)
        || ATTRS_WRITABLE.contains(&k)
        || Kind::ALL.iter().any(|kind| kind.field() == k)
}

/// A node create request, checked.
pub struct NodeCreate(pub Dict);

impl Conductor {
    pub async fn create_node(self: &Arc<Self>, req: NodeCreate) -> Result<Node, ServiceError> {
        let body = req.0;
        let mut body = body;
        if let Some(Value::String(p)) = body.get("parent_node") {
            let parent = self.parent_uuid(p).await?;
            body.insert("parent_node".into(), Value::String(parent));
        }
        for k in body.keys() {
            if !writable(k) {
                return Err(ServiceError::Invalid(format!(
                    "Unknown attribute for argument node: {k}"
                )));
            }
        }
        let driver = body
            .get("driver")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::Invalid("Mandatory field missing: driver.".into()))?;
        let uuid = match body.get("uuid").and_then(Value::as_str) {
            Some(u) => parse_uuid(u)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut node = Node {
            uuid,
            name: None,
            driver: driver.to_owned(),
            driver_info: Dict::new(),
            driver_internal_info: Dict::new(),
            console_interface: String::new(),
            interfaces: Default::default(),
            power_state: None,
            target_power_state: None,
            provision_state: "enroll".into(),
            target_provision_state: None,
            maintenance: false,
            maintenance_reason: None,
            console_enabled: false,
            console_info: None,
            properties: Dict::new(),
            instance_info: Dict::new(),
            instance_uuid: None,
            extra: Dict::new(),
            resource_class: None,
            last_error: None,
            created_at: now(),
            updated_at: None,
            provision_updated_at: None,
            inspection_started_at: None,
            inspection_finished_at: None,
            deploy_step: Dict::new(),
            clean_step: Dict::new(),
            automated_clean: None,
            reservation: None,
            attrs: NodeAttrs::default(),
        };
        let mut doc = editable(&node);
        for (k, v) in &body {
            if writable(k) && k != "uuid" {
                doc.insert(k.clone(), v.clone());
            }
        }
        let before = node.clone();
        read_back(&mut node, &doc)?;
        node_attrs::check_update(&before, &mut node)?;
        self.drivers.apply(&mut node, &doc, None)?;
        self.store.insert_node(&node).await?;
        self.spawn_power_sync(&node.uuid).await;
        Ok(node)
    }

    pub async fn patch_node(&self, ident: &str, ops: &Value) -> Result<Node, ServiceError> {
        self.patch_node_with(ident, ops, false).await
    }

    /// [`Conductor::patch_node`] with Ironic's `reset_interfaces`: on a
    /// driver change, the interfaces the PATCH does not set take the new
    /// hardware type's defaults (400 without a driver change).
    pub async fn patch_node_with(
        &self,
        ident: &str,
        ops: &Value,
        reset_interfaces: bool,
    ) -> Result<Node, ServiceError> {
        node_attrs::check_paths(ops)?;
        let mut parents = Vec::new();
        for p in node_attrs::parent_values(ops) {
            let uuid = self.parent_uuid(&p).await?;
            parents.push((p, uuid));
        }
        let ops = &node_attrs::with_parents(ops, &parents);
        // As Ironic's update_node, a PATCH needs the node's lock: 409
        // while a provision or power action runs.
        let uuid = self.store.get_node(ident).await?.uuid;
        if self.is_busy(&uuid) {
            return Err(ServiceError::Locked(uuid));
        }
        let ops = ops.clone();
        let drivers = self.drivers.clone();
        self.store.modify_node(&uuid, move |node: &mut Node| {
            let mut doc = Value::Object(editable(node));
            patch::apply(&mut doc, &ops)?;
            let Value::Object(doc) = doc else { unreachable!("patched an object") };
            let before = node.clone();
            read_back(node, &doc)?;
            node_attrs::check_update(&before, node)?;
            drivers.apply_with(node, &doc, Some(&before), reset_interfaces)?;
            let changed = node.driver != before.driver || node.console_interface != before.console_interface;
            if changed && before.console_enabled {
                return Err(ServiceError::Conflict(format!(
                    "Node {} has its console enabled; disable the console before changing the driver or console_interface.",
                    before.uuid
                )));
            }
            Ok(())
        })
        .await
    }

    /// A `parent_node` given by name or UUID, as the parent's UUID (400 if
    /// there is no such node, as Ironic turns its 404 into a bad request).
    async fn parent_uuid(&self, ident: &str) -> Result<String, ServiceError> {
        match self.store.get_node(ident).await {
            Ok(n) => Ok(n.uuid),
            Err(crate::db::DbError::NotFound { .. }) => Err(ServiceError::Invalid(format!(
                "Node {} could not be found.",
                ident.chars().take(64).collect::<String>()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Disable the node's console (if on), then forget the node and its ports.
    pub async fn delete_node(self: &Arc<Self>, ident: &str) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        let _busy = self.reserve(&node.uuid)?;
        let lock = self.console_lock(&node.uuid);
        let _console = lock.lock().await;
        let node = self.store.get_node(&node.uuid).await?;
        node_attrs::check_deletable(&node)?;
        // Ironic's DELETE_ALLOWED_STATES plus available
        // (allow_deleting_available_nodes, on by default); any state in
        // maintenance.
        const ALLOWED: [&str; 4] = ["manageable", "enroll", "adopt failed", "available"];
        if !node.maintenance && !ALLOWED.contains(&node.provision_state.as_str()) {
            return Err(ServiceError::Conflict(format!(
                "Can not delete node \"{}\" while it is in provision state \"{}\". Valid provision states to perform deletion are: \"('manageable', 'enroll', 'adopt failed', 'available')\", or set the node into maintenance mode",
                node.uuid, node.provision_state
            )));
        }
        if node.console_enabled {
            self.consoles.disable(&node.uuid).await?;
        }
        self.store.delete_node(&node.uuid).await?;
        Ok(())
    }
}

/// The client-editable attributes of `node` as a JSON object (clear text).
fn editable(node: &Node) -> Dict {
    let v = json!({
        "name": node.name,
        "driver": node.driver,
        "driver_info": node.driver_info,
        "properties": node.properties,
        "instance_info": node.instance_info,
        "instance_uuid": node.instance_uuid,
        "extra": node.extra,
        "resource_class": node.resource_class,
        "maintenance": node.maintenance,
        "maintenance_reason": node.maintenance_reason,
        "automated_clean": node.automated_clean,
    });
    let Value::Object(mut m) = v else {
        unreachable!("a json! object")
    };
    m.extend(node.attrs.editable());
    for kind in Kind::ALL {
        let name = node.interface(kind);
        let v = if name.is_empty() {
            Value::Null
        } else {
            name.into()
        };
        m.insert(kind.field(), v);
    }
    m
}

/// Copy the edited attributes back into `node`, checking each.
fn read_back(node: &mut Node, doc: &Dict) -> Result<(), ServiceError> {
    let s = |k: &str| -> Result<Option<String>, ServiceError> {
        match doc.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(other) => Err(ServiceError::Invalid(format!(
                "{k} must be a string, not {other}."
            ))),
        }
    };
    let d = |k: &str| -> Result<Dict, ServiceError> {
        match doc.get(k) {
            None | Some(Value::Null) => Ok(Dict::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(other) => Err(ServiceError::Invalid(format!(
                "{k} must be a JSON object, not {other}."
            ))),
        }
    };
    node.name = s("name")?;
    if let Some(n) = &node.name {
        check_name(n)?;
    }
    // Checked, with the interfaces, by `drivers::Registry::apply`.
    node.driver =
        s("driver")?.ok_or_else(|| ServiceError::Invalid("driver cannot be removed.".into()))?;
    let old_info = std::mem::take(&mut node.driver_info);
    node.driver_info = keep_masked(d("driver_info")?, &old_info);
    node.properties = d("properties")?;
    node.instance_info = d("instance_info")?;
    node.extra = d("extra")?;
    node.instance_uuid = s("instance_uuid")?;
    node.resource_class = s("resource_class")?;
    node.maintenance_reason = s("maintenance_reason")?;
    node.maintenance = match doc.get("maintenance") {
        None | Some(Value::Null) => false,
        Some(v) => super::parse_bool("maintenance", v)?,
    };
    node.automated_clean = match doc.get("automated_clean") {
        None | Some(Value::Null) => None,
        Some(v) => Some(super::parse_bool("automated_clean", v)?),
    };
    node_attrs::read_back(&mut node.attrs, doc)?;
    Ok(())
}

/// A client that sends back `******` keeps the stored secret.
fn keep_masked(mut info: Dict, old: &Dict) -> Dict {
    for (k, v) in info.iter_mut() {
        if v.as_str() == Some(MASK) {
            if let Some(prev) = old.get(k) {
                *v = prev.clone();
            }
        }
    }
    info
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        && uuid::Uuid::parse_str(name).is_err();
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "Expected a logical name but received {name}: letters, digits, '-', '.', '_' and '~' only, and not a UUID."
        )))
    }
}
