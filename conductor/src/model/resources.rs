//! The records Ironic keeps beside nodes and ports: portgroups, volume
//! connectors and volume targets, each stored whole as JSON (`db::docs`)
//! and rendered in Ironic's form by `to_api`. Callers: `db`, `service`
//! (create/PATCH rules), `api` (rendering).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{links, Dict};

fn object(v: Value) -> Dict {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a json! object"),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Portgroup {
    pub uuid: String,
    pub name: Option<String>,
    pub address: Option<String>,
    pub node_uuid: String,
    #[serde(default)]
    pub extra: Dict,
    pub mode: Option<String>,
    #[serde(default)]
    pub properties: Dict,
    pub standalone_ports_supported: bool,
    /// `tenant_vif_port_id` is the attached VIF, as on ports.
    #[serde(default)]
    pub internal_info: Dict,
    pub physical_network: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

impl Portgroup {
    pub fn to_api(&self, base: &str) -> Dict {
        let uuid = &self.uuid;
        object(json!({
            "uuid": uuid,
            "name": self.name,
            "address": self.address,
            "node_uuid": self.node_uuid,
            "extra": self.extra,
            "mode": self.mode,
            "properties": self.properties,
            "standalone_ports_supported": self.standalone_ports_supported,
            "internal_info": self.internal_info,
            "physical_network": self.physical_network,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "links": links(base, &format!("portgroups/{uuid}")),
            "ports": links(base, &format!("portgroups/{uuid}/ports")),
        }))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeConnector {
    pub uuid: String,
    pub node_uuid: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub connector_id: String,
    #[serde(default)]
    pub extra: Dict,
    pub created_at: String,
    pub updated_at: Option<String>,
}

impl VolumeConnector {
    pub fn to_api(&self, base: &str) -> Dict {
        object(json!({
            "uuid": self.uuid,
            "node_uuid": self.node_uuid,
            "type": self.kind,
            "connector_id": self.connector_id,
            "extra": self.extra,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "links": links(base, &format!("volume/connectors/{}", self.uuid)),
        }))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeTarget {
    pub uuid: String,
    pub node_uuid: String,
    pub volume_type: String,
    #[serde(default)]
    pub properties: Dict,
    pub boot_index: i64,
    pub volume_id: String,
    #[serde(default)]
    pub extra: Dict,
    pub created_at: String,
    pub updated_at: Option<String>,
}

impl VolumeTarget {
    pub fn to_api(&self, base: &str) -> Dict {
        object(json!({
            "uuid": self.uuid,
            "node_uuid": self.node_uuid,
            "volume_type": self.volume_type,
            "properties": self.properties,
            "boot_index": self.boot_index,
            "volume_id": self.volume_id,
            "extra": self.extra,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "links": links(base, &format!("volume/targets/{}", self.uuid)),
        }))
    }
}
