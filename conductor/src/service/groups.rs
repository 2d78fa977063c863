//! Portgroups, volume connectors and volume targets: create, PATCH and
//! delete with Ironic's checks. Each kind is read back from an editable
//! JSON document ([`Editable`]), so create (body on defaults) and PATCH
//! (JSON Patch on the record) share one validation.
//!
//! Callers: the handlers in `api::portgroups` and `api::volume`.

use serde_json::{json, Value};

use super::{normalize_mac, parse_bool, parse_uuid, shown, Conductor, ServiceError};
use crate::db::{DbError, Doc};
use crate::model::{now, Dict, Portgroup, VolumeConnector, VolumeTarget};
use crate::patch;

/// A record kind edited as a JSON document.
pub trait Editable: Doc + Sized {
    /// Fields a create body may give (besides `uuid`) and a PATCH may change.
    const FIELDS: &'static [&'static str];
    /// A blank record on `node_uuid`.
    fn blank(uuid: String, node_uuid: String) -> Self;
    fn editable(&self) -> Dict;
    fn read_back(&mut self, doc: &Dict) -> Result<(), ServiceError>;
}

fn object(v: Value) -> Dict {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a json! object"),
    }
}

fn opt_str(doc: &Dict, k: &str, max: usize) -> Result<Option<String>, ServiceError> {
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

fn req_str(doc: &Dict, k: &str, max: usize) -> Result<String, ServiceError> {
    opt_str(doc, k, max)?
        .ok_or_else(|| ServiceError::Invalid(format!("Mandatory field missing: {k}.")))
}

fn dict(doc: &Dict, k: &str) -> Result<Dict, ServiceError> {
    match doc.get(k) {
        None | Some(Value::Null) => Ok(Dict::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(ServiceError::Invalid(format!(
            "Invalid {k}: {} is not of type 'object'",
            shown(other)
        ))),
    }
}

impl Editable for Portgroup {
    const FIELDS: &'static [&'static str] = &[
        "address",
        "extra",
        "mode",
        "name",
        "node_uuid",
        "properties",
        "standalone_ports_supported",
        "physical_network",
    ];
    fn blank(uuid: String, node_uuid: String) -> Self {
        Portgroup {
            uuid,
            name: None,
            address: None,
            node_uuid,
            extra: Dict::new(),
            // Ironic's [DEFAULT]default_portgroup_mode.
            mode: Some("active-backup".into()),
            properties: Dict::new(),
            standalone_ports_supported: true,
            internal_info: Dict::new(),
            physical_network: None,
            created_at: now(),
            updated_at: None,
        }
    }
    fn editable(&self) -> Dict {
        object(json!({
            "address": self.address,
            "extra": self.extra,
            "mode": self.mode,
            "name": self.name,
            "node_uuid": self.node_uuid,
            "properties": self.properties,
            "standalone_ports_supported": self.standalone_ports_supported,
            "physical_network": self.physical_network,
        }))
    }
    fn read_back(&mut self, doc: &Dict) -> Result<(), ServiceError> {
        self.address = opt_str(doc, "address", 64)?
            .map(|a| normalize_mac(&a))
            .transpose()?;
        self.name = opt_str(doc, "name", 255)?;
        if let Some(n) = &self.name {
            let ok = n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
                && !n.is_empty()
                && uuid::Uuid::parse_str(n).is_err();
            if !ok {
                return Err(ServiceError::Invalid(format!(
                    "Cannot create portgroup with invalid name '{}'",
                    n.chars().take(64).collect::<String>()
                )));
            }
        }
        self.node_uuid = parse_uuid(&req_str(doc, "node_uuid", 36)?)?;
        self.extra = dict(doc, "extra")?;
        self.properties = dict(doc, "properties")?;
        self.mode = opt_str(doc, "mode", 255)?.or_else(|| Some("active-backup".into()));
        self.standalone_ports_supported = match doc.get("standalone_ports_supported") {
            None | Some(Value::Null) => true,
            Some(v) => parse_bool("standalone_ports_supported", v)?,
        };
        self.physical_network = opt_str(doc, "physical_network", 64)?;
        Ok(())
    }
}

/// Ironic's volume connector types.
const CONNECTOR_TYPES: &[&str] = &["iqn", "ip", "mac", "wwnn", "wwpn", "port", "portal"];

impl Editable for VolumeConnector {
    const FIELDS: &'static [&'static str] = &["node_uuid", "type", "connector_id", "extra"];
    fn blank(uuid: String, node_uuid: String) -> Self {
        VolumeConnector {
            uuid,
            node_uuid,
            kind: String::new(),
            connector_id: String::new(),
            extra: Dict::new(),
            created_at: now(),
            updated_at: None,
        }
    }
    fn editable(&self) -> Dict {
        object(json!({
            "node_uuid": self.node_uuid,
            "type": if self.kind.is_empty() { Value::Null } else { json!(self.kind) },
            "connector_id": if self.connector_id.is_empty() { Value::Null } else { json!(self.connector_id) },
            "extra": self.extra,
        }))
    }
    fn read_back(&mut self, doc: &Dict) -> Result<(), ServiceError> {
        self.node_uuid = parse_uuid(&req_str(doc, "node_uuid", 36)?)?;
        self.kind = req_str(doc, "type", 32)?;
        if !CONNECTOR_TYPES.contains(&self.kind.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "Invalid type: '{}' is not one of {CONNECTOR_TYPES:?}",
                self.kind.chars().take(32).collect::<String>()
            )));
        }
        self.connector_id = req_str(doc, "connector_id", 255)?;
        self.extra = dict(doc, "extra")?;
        Ok(())
    }
}

impl Editable for VolumeTarget {
    const FIELDS: &'static [&'static str] = &[
        "node_uuid",
        "volume_type",
        "properties",
        "boot_index",
        "volume_id",
        "extra",
    ];
    fn blank(uuid: String, node_uuid: String) -> Self {
        VolumeTarget {
            uuid,
            node_uuid,
            volume_type: String::new(),
            properties: Dict::new(),
            boot_index: -1,
            volume_id: String::new(),
            extra: Dict::new(),
            created_at: now(),
            updated_at: None,
        }
    }
    fn editable(&self) -> Dict {
        object(json!({
            "node_uuid": self.node_uuid,
            "volume_type": if self.volume_type.is_empty() { Value::Null } else { json!(self.volume_type) },
            "properties": self.properties,
            "boot_index": if self.boot_index < 0 { Value::Null } else { json!(self.boot_index) },
            "volume_id": if self.volume_id.is_empty() { Value::Null } else { json!(self.volume_id) },
            "extra": self.extra,
        }))
    }
    fn read_back(&mut self, doc: &Dict) -> Result<(), ServiceError> {
        self.node_uuid = parse_uuid(&req_str(doc, "node_uuid", 36)?)?;
        self.volume_type = req_str(doc, "volume_type", 64)?;
        self.volume_id = req_str(doc, "volume_id", 36)?;
        self.properties = dict(doc, "properties")?;
        self.extra = dict(doc, "extra")?;
        self.boot_index = match doc.get("boot_index") {
            None | Some(Value::Null) => {
                return Err(ServiceError::Invalid(
                    "Mandatory field missing: boot_index.".into(),
                ))
            }
            Some(Value::Number(n)) if n.as_i64().is_some_and(|i| i >= 0) => {
                n.as_i64().unwrap_or_default()
            }
            Some(Value::String(s)) if s.parse::<u32>().is_ok() => {
                i64::from(s.parse::<u32>().unwrap_or_default())
            }
            Some(other) => {
                return Err(ServiceError::Invalid(format!(
                    "Invalid boot_index: {} is not a non-negative integer",
                    shown(other)
                )))
            }
        };
        Ok(())
    }
}

/// A node named in a create or PATCH body must exist: 400, not 404.
fn node_missing(e: DbError) -> ServiceError {
    match e {
        DbError::NotFound { kind, ident } => {
            ServiceError::Invalid(format!("{kind} {ident} could not be found."))
        }
        other => other.into(),
    }
}

impl Conductor {
    pub async fn create_doc<T: Editable>(&self, body: &Dict) -> Result<T, ServiceError> {
        for k in body.keys() {
            if !T::FIELDS.contains(&k.as_str()) && k != "uuid" {
                return Err(ServiceError::Invalid(format!(
                    "Unknown attribute for argument {}: {k}",
                    T::TABLE.trim_end_matches('s')
                )));
            }
        }
        let node = body
            .get("node_uuid")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::Invalid("Mandatory field missing: node_uuid.".into()))?;
        let node = self.store.get_node(node).await.map_err(node_missing)?;
        let uuid = match body.get("uuid").and_then(Value::as_str) {
            Some(u) => parse_uuid(u)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut rec = T::blank(uuid, node.uuid.clone());
        let mut doc = rec.editable();
        doc.extend(
            body.iter()
                .filter(|(k, _)| *k != "uuid")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        doc.insert("node_uuid".into(), Value::String(node.uuid));
        rec.read_back(&doc)?;
        self.store.insert_doc(&rec).await?;
        Ok(rec)
    }

    pub async fn patch_doc<T: Editable>(
        &self,
        ident: &str,
        ops: &Value,
    ) -> Result<T, ServiceError> {
        if let Some(path) = patch::first_disallowed(ops, T::FIELDS) {
            return Err(ServiceError::Invalid(format!(
                "Cannot patch {}. Only the following can be updated: {}",
                path.chars().take(128).collect::<String>(),
                T::FIELDS.join(", ")
            )));
        }
        let current: T = self.store.get_doc(ident).await?;
        let mut trial = current.clone();
        apply::<T>(&mut trial, ops)?;
        if trial.node_uuid() != current.node_uuid() {
            self.store
                .get_node(trial.node_uuid())
                .await
                .map_err(node_missing)?;
        }
        let ops = ops.clone();
        self.store
            .modify_doc(current.uuid(), move |d: &mut T| apply::<T>(d, &ops))
            .await
    }

    /// Delete a portgroup (refused while ports are in it) or volume record.
    pub async fn delete_doc<T: Editable>(&self, ident: &str) -> Result<(), ServiceError> {
        let rec: T = self.store.get_doc(ident).await?;
        if T::TABLE == "portgroups" {
            let ports = self.store.list_ports(Some(rec.node_uuid())).await?;
            if ports
                .iter()
                .any(|p| p.portgroup_uuid.as_deref() == Some(rec.uuid()))
            {
                return Err(ServiceError::Invalid(format!(
                    "Cannot complete the requested action because portgroup {} contains ports.",
                    rec.uuid()
                )));
            }
        }
        self.store.delete_doc::<T>(rec.uuid()).await?;
        Ok(())
    }
}

fn apply<T: Editable>(rec: &mut T, ops: &Value) -> Result<(), ServiceError> {
    let mut doc = Value::Object(rec.editable());
    patch::apply(&mut doc, ops)?;
    let Value::Object(doc) = doc else {
        unreachable!("patched an object")
    };
    rec.read_back(&doc)
}
