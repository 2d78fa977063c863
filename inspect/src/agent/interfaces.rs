//! The inventory's network interfaces and the ports they give, as
//! Ironic's `validate-interfaces` and `ports` hooks: every named interface
//! with a valid MAC, the valid ones (not loopback, and what `add_ports`
//! keeps), then the ports to create, delete (`keep_ports`) and update
//! (`pxe_enabled`, client id).
//!
//! Callers: [`super::process`].

use serde_json::Value;
use tracing::warn;

use super::{AddPorts, AgentConfig, Dict, KeepPorts, NodeNow, Outcome, Port};

/// One inventory interface, checked.
#[derive(Clone, Debug)]
pub(super) struct Iface {
    name: String,
    pub(super) mac: String,
    ip: Option<String>,
    client_id: Option<String>,
    pxe: bool,
    raw: Dict,
}

/// A MAC address in Ironic's form (lower case, colons), if it is one.
pub fn normalize_mac(raw: &str) -> Option<String> {
    let lower = raw.trim().to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = lower.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(lower)
}

/// The PXE interface's MAC (`boot.pxe_interface`, pxelinux's
/// `01-aa-bb-...` form accepted).
fn pxe_mac(inventory: &Dict) -> Option<String> {
    let raw = inventory.get("boot")?.get("pxe_interface")?.as_str()?;
    let raw = match raw.split_once('-') {
        Some((_, rest)) if raw.len() == 20 => rest.replace('-', ":"),
        _ => raw.to_owned(),
    };
    normalize_mac(&raw)
}

fn is_loopback(ip: &str) -> bool {
    let ip = ip.split('%').next().unwrap_or(ip);
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

pub(super) fn str_field(d: &Dict, k: &str) -> Option<String> {
    d.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Ironic's `get_interfaces`: named interfaces with a valid MAC.
pub(super) fn all_interfaces(uuid: &str, inventory: &Dict) -> Result<Vec<Iface>, String> {
    let Some(list) = inventory.get("interfaces").and_then(Value::as_array) else {
        return Err(format!(
            "Inventory for node {uuid} is invalid: no interfaces present in inventory"
        ));
    };
    let pxe = pxe_mac(inventory);
    let mut out = Vec::new();
    for raw in list {
        let Some(d) = raw.as_object() else { continue };
        let Some(name) = str_field(d, "name") else {
            warn!(node = %uuid, "interface without a name skipped");
            continue;
        };
        let Some(mac) = str_field(d, "mac_address").and_then(|m| normalize_mac(&m)) else {
            continue;
        };
        let ip = str_field(d, "ipv4_address").or_else(|| {
            str_field(d, "ipv6_address").map(|a| a.split('%').next().unwrap_or(&a).to_owned())
        });
        out.push(Iface {
            pxe: pxe.as_deref() == Some(mac.as_str()),
            name,
            mac,
            ip,
            client_id: str_field(d, "client_id"),
            raw: d.clone(),
        });
    }
    Ok(out)
}

/// Ironic's `validate_interfaces`: not loopback, and what add_ports keeps.
pub(super) fn valid_interfaces(
    uuid: &str,
    inventory: &Dict,
    all: &[Iface],
    add: AddPorts,
) -> Result<Vec<Iface>, String> {
    if all.is_empty() {
        return Err(format!(
            "Inventory for node {uuid} is invalid: no valid network interfaces"
        ));
    }
    let pxe_known = pxe_mac(inventory).is_some();
    let valid: Vec<Iface> = all
        .iter()
        .filter(|i| i.name != "lo" && !i.ip.as_deref().is_some_and(is_loopback))
        .filter(|i| !(add == AddPorts::Pxe && pxe_known && !i.pxe))
        .filter(|i| !(add == AddPorts::Active && i.ip.is_none()))
        .cloned()
        .collect();
    if valid.is_empty() {
        return Err(format!(
            "Inventory for node {uuid} is invalid: no network interfaces match the configuration (add_ports set to \"{}\")",
            add.as_str()
        ));
    }
    Ok(valid)
}

/// Ironic's ports hook: create, keep or delete, update.
pub(super) fn ports(node: &NodeNow, all: &[Iface], valid: &[Iface], cfg: &AgentConfig) -> Outcome {
    let mut out = Outcome::default();
    let has = |mac: &str| node.ports.iter().any(|p| p.address == mac);
    if cfg.add_ports != AddPorts::Disabled {
        for i in valid.iter().filter(|i| !has(&i.mac)) {
            if out.add_ports.iter().any(|p| p.address == i.mac) {
                continue;
            }
            out.add_ports.push(Port {
                address: i.mac.clone(),
                pxe_enabled: i.pxe,
                client_id: i.client_id.clone(),
            });
        }
    }
    let expected: Option<Vec<&str>> = match cfg.keep_ports {
        KeepPorts::All => None,
        KeepPorts::Present => Some(all.iter().map(|i| i.mac.as_str()).collect()),
        KeepPorts::Added => Some(valid.iter().map(|i| i.mac.as_str()).collect()),
    };
    for p in &node.ports {
        if expected
            .as_ref()
            .is_some_and(|e| !e.contains(&p.address.as_str()))
        {
            out.delete_ports.push(p.address.clone());
            continue;
        }
        let mut next = p.clone();
        if cfg.update_pxe_enabled {
            next.pxe_enabled = all.iter().any(|i| i.pxe && i.mac == p.address);
        }
        let seen = all.iter().find(|i| i.mac == p.address);
        if let Some(id) = seen.and_then(|i| i.client_id.clone()) {
            next.client_id = Some(id);
        }
        if next != *p {
            out.update_ports.push(next);
        }
    }
    out
}

/// Interfaces as plugin data shows them (`name → interface`).
pub(super) fn iface_map(list: &[Iface]) -> Value {
    let m: Dict = list
        .iter()
        .map(|i| {
            let mut d = i.raw.clone();
            d.insert("mac_address".into(), i.mac.clone().into());
            d.insert("pxe_enabled".into(), i.pxe.into());
            (i.name.clone(), Value::Object(d))
        })
        .collect();
    Value::Object(m)
}
