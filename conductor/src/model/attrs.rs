//! The node attributes Ironic added after the first API versions (owner,
//! lessee, description, protected, retired, conductor_group, shard,
//! parent_node, network_data, traits, ...), kept together as one record
//! ([`NodeAttrs`], stored as JSON beside the node row by `db`), and how
//! they render. Their PATCH rules live in `service::node_attrs`.
//! Callers: `model::Node`, `db`, `service`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Dict;

/// What Ironic reports as `conductor` (the host that manages the node).
pub const CONDUCTOR_HOST: &str = crate::service::HOST;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeAttrs {
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub description: Option<String>,
    pub protected: bool,
    pub protected_reason: Option<String>,
    pub retired: bool,
    pub retired_reason: Option<String>,
    /// Lower case, `""` when none (as Ironic).
    pub conductor_group: String,
    pub shard: Option<String>,
    /// The parent node's UUID.
    pub parent_node: Option<String>,
    pub network_data: Dict,
    pub disable_power_off: bool,
    /// Sorted, unique, each valid (see `api::traits`).
    pub traits: Vec<String>,
}

/// Writable attributes of [`NodeAttrs`] as PATCH and create see them.
pub const WRITABLE: &[&str] = &[
    "owner",
    "lessee",
    "description",
    "protected",
    "protected_reason",
    "retired",
    "retired_reason",
    "conductor_group",
    "shard",
    "parent_node",
    "network_data",
    "disable_power_off",
    "chassis_uuid",
];

impl NodeAttrs {
    /// The writable attributes as a JSON object (for JSON Patch).
    pub fn editable(&self) -> Dict {
        let v = json!({
            "owner": self.owner,
            "lessee": self.lessee,
            "description": self.description,
            "protected": self.protected,
            "protected_reason": self.protected_reason,
            "retired": self.retired,
            "retired_reason": self.retired_reason,
            "conductor_group": self.conductor_group,
            "shard": self.shard,
            "parent_node": self.parent_node,
            "network_data": self.network_data,
            "disable_power_off": self.disable_power_off,
            // No chassis exist here: always null.
            "chassis_uuid": Value::Null,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a json! object"),
        }
    }

    /// Add every attribute, and the read-only ones Ironic shows, to `out`.
    pub fn render_into(&self, out: &mut Dict) {
        out.extend(self.editable());
        let read_only = json!({
            "traits": self.traits,
            "conductor": CONDUCTOR_HOST,
            "allocation_uuid": Value::Null,
            "fault": Value::Null,
            "boot_mode": Value::Null,
            "secure_boot": Value::Null,
            "raid_config": {},
            "target_raid_config": {},
            "service_step": {},
        });
        if let Value::Object(m) = read_only {
            out.extend(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_records_read_with_defaults() {
        let a: NodeAttrs = serde_json::from_str(r#"{"owner": "p1"}"#).unwrap();
        assert_eq!(a.owner.as_deref(), Some("p1"));
        assert!(!a.protected && a.traits.is_empty() && a.conductor_group.is_empty());
        let mut out = Dict::new();
        a.render_into(&mut out);
        for k in WRITABLE {
            assert!(out.contains_key(*k), "{k} not rendered");
        }
        assert_eq!(out["conductor"], CONDUCTOR_HOST);
        assert_eq!(out["traits"], json!([]));
    }
}
