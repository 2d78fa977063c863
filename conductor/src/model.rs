//! The node and port records the conductor keeps, and their Ironic JSON form.
//!
//! [`Node`] and [`Port`] hold clear text in memory (the store seals secrets
//! at rest); [`Node::to_api`] renders what clients see: every password
//! `******`, links, and the `fields` selection. Callers: the store (`db`),
//! the domain operations (`service`) and the REST handlers (`api`).

use serde_json::{json, Map, Value};

/// A JSON object (driver_info, properties, ...).
pub type Dict = Map<String, Value>;

/// What every password looks like to clients.
pub const MASK: &str = "******";

pub const POWER_ON: &str = "power on";
pub const POWER_OFF: &str = "power off";
pub const REBOOTING: &str = "rebooting";

/// The hardware type whose interfaces are all `fake` (power kept in the
/// database, deploy and inspect succeed at once): for tests and the demo.
pub const FAKE_HARDWARE: &str = "fake-hardware";

/// The power/management interface name of a hardware type.
fn hw_interface(driver: &str) -> &str {
    if driver == FAKE_HARDWARE {
        "fake"
    } else {
        driver
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub uuid: String,
    pub name: Option<String>,
    pub driver: String,
    pub driver_info: Dict,
    pub driver_internal_info: Dict,
    pub console_interface: String,
    pub power_state: Option<String>,
    pub target_power_state: Option<String>,
    pub provision_state: String,
    pub target_provision_state: Option<String>,
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub console_enabled: bool,
    /// The last endpoint console-svc reported (`{"type", "url"}`); internal,
    /// shown only through `GET /states/console`.
    pub console_info: Option<Value>,
    pub properties: Dict,
    pub instance_info: Dict,
    pub instance_uuid: Option<String>,
    pub extra: Dict,
    pub resource_class: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
    /// When provision_state last changed.
    pub provision_updated_at: Option<String>,
    pub inspection_started_at: Option<String>,
    pub inspection_finished_at: Option<String>,
    /// The deploy / clean step running now (`{}` when none), as Ironic.
    pub deploy_step: Dict,
    pub clean_step: Dict,
    /// Run automated cleaning on provide and undeploy (`None`: yes, as
    /// Ironic's `[conductor]automated_clean` default).
    pub automated_clean: Option<bool>,
    /// The host holding the node's lock while an action runs; not stored
    /// (the conductor fills it from its locks when rendering).
    pub reservation: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub uuid: String,
    pub address: String,
    pub node_uuid: String,
    pub extra: Dict,
    pub pxe_enabled: bool,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// Is this driver_info key a secret?
pub fn is_secret_key(key: &str) -> bool {
    key.contains("password")
}

/// `dict` with every secret value replaced by `******`.
pub fn masked(dict: &Dict) -> Dict {
    dict.iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) && !v.is_null() {
                Value::String(MASK.into())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Now, as Ironic prints times: `2025-01-02T03:04:05+00:00`.
pub fn now() -> String {
    let s = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    s.trim_end_matches('Z').to_owned() + "+00:00"
}

/// `{"href", "rel"}` pairs for a resource under `/v1` and its bookmark.
pub fn links(base: &str, path: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{path}"), "rel": "self"},
        {"href": format!("{base}/{path}"), "rel": "bookmark"},
    ])
}

/// The fields `GET /v1/nodes` shows without `detail` or `fields`.
pub const NODE_LIST_FIELDS: &[&str] = &[
    "uuid",
    "name",
    "instance_uuid",
    "power_state",
    "provision_state",
    "maintenance",
    "links",
];

impl Node {
    /// The full Ironic representation (passwords masked).
    pub fn to_api(&self, base: &str) -> Dict {
        let uuid = &self.uuid;
        let v = json!({
            "uuid": uuid,
            "name": self.name,
            "driver": self.driver,
            "driver_info": masked(&self.driver_info),
            "driver_internal_info": self.driver_internal_info,
            "console_interface": self.console_interface,
            "power_interface": hw_interface(&self.driver),
            "management_interface": hw_interface(&self.driver),
            "boot_interface": if self.driver == FAKE_HARDWARE { "fake" } else { "pxe" },
            "deploy_interface": crate::provision::interfaces::interface_names(&self.driver).0,
            "inspect_interface": crate::provision::interfaces::interface_names(&self.driver).1,
            "power_state": self.power_state,
            "target_power_state": self.target_power_state,
            "provision_state": self.provision_state,
            "target_provision_state": self.target_provision_state,
            "maintenance": self.maintenance,
            "maintenance_reason": self.maintenance_reason,
            "fault": Value::Null,
            "console_enabled": self.console_enabled,
            "properties": self.properties,
            "instance_info": crate::instance_info::masked(&self.instance_info),
            "instance_uuid": self.instance_uuid,
            "extra": self.extra,
            "resource_class": self.resource_class,
            "last_error": self.last_error,
            "reservation": self.reservation,
            "automated_clean": self.automated_clean,
            "deploy_step": self.deploy_step,
            "clean_step": self.clean_step,
            "conductor_group": "",
            "conductor": "porthole-conductor",
            "traits": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "provision_updated_at": self.provision_updated_at,
            "inspection_started_at": self.inspection_started_at,
            "inspection_finished_at": self.inspection_finished_at,
            "links": links(base, &format!("nodes/{uuid}")),
            "ports": links(base, &format!("nodes/{uuid}/ports")),
            "states": links(base, &format!("nodes/{uuid}/states")),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a json! object"),
        }
    }
}

impl Port {
    pub fn to_api(&self, base: &str) -> Dict {
        let v = json!({
            "uuid": self.uuid,
            "address": self.address,
            "node_uuid": self.node_uuid,
            "extra": self.extra,
            "pxe_enabled": self.pxe_enabled,
            "local_link_connection": {},
            "internal_info": {},
            "portgroup_uuid": Value::Null,
            "physical_network": Value::Null,
            "is_smartnic": false,
            "name": Value::Null,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "links": links(base, &format!("ports/{}", self.uuid)),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a json! object"),
        }
    }
}

/// Keep only `fields` of `full` (unknown names are the caller's 400).
pub fn select(full: Dict, fields: &[String]) -> Dict {
    full.into_iter()
        .filter(|(k, _)| fields.iter().any(|f| f == k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let mut d = Dict::new();
        d.insert("ipmi_password".into(), "secret".into());
        d.insert("ipmi_username".into(), "admin".into());
        let m = masked(&d);
        assert_eq!(m["ipmi_password"], MASK);
        assert_eq!(m["ipmi_username"], "admin");
    }

    #[test]
    fn times_look_like_ironics() {
        let t = now();
        assert!(t.ends_with("+00:00") && t.contains('T'), "{t}");
    }
}
