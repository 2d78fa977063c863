//! The built-in `agent` inspect interface's processing: from the inventory
//! the ramdisk posted (`POST /v1/continue_inspection` on the conductor,
//! forwarded here over `ContinueInspection`) to what the node's properties
//! and ports become. Pure functions over JSON; the conductor applies the
//! [`Outcome`] to its database, this service writes nothing.
//!
//! Ironic's default hooks, in Ironic's order, then the property hooks the
//! issue asks for:
//!
//! ```text
//!  ramdisk-error        plugin data `error` set ──▶ fail
//!  validate-interfaces  inventory interfaces ──▶ all (valid MAC, named),
//!                       valid (not lo/loopback, filtered by add_ports)
//!  properties           cpus, memory_mb, cpu_arch, local_gb (root disk:
//!                       root_device hints, else the smallest disk ≥ 4 GiB;
//!                       GiB − 1), capabilities (cpu flags, boot_mode);
//!                       a property already set is kept unless
//!                       overwrite_existing
//!  ports                add_ports: create the valid ones not there yet;
//!                       keep_ports: delete the others; pxe_enabled and
//!                       client id brought in line with the inventory
//! ```
//!
//! Callers: [`crate::inspections::Inspections::continue_agent`].

mod hints;
mod interfaces;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{info, warn};

pub use hints::HintError;
pub use interfaces::normalize_mac;
use interfaces::{all_interfaces, iface_map, ports, str_field, valid_interfaces};

/// A JSON object.
pub type Dict = Map<String, Value>;

const GIB: u64 = 1 << 30;
/// Without hints, the root disk is the smallest disk of at least this size
/// (the ramdisk's own rule for its install device).
pub const MIN_ROOT_DISK: u64 = 4 * GIB;

/// Which inventory MAC addresses become ports (Ironic's `[inspector]
/// add_ports`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AddPorts {
    /// Every interface.
    All,
    /// Interfaces with an IP address.
    Active,
    /// Only the PXE-booting interface (all of them when the inventory does
    /// not say which one booted).
    #[default]
    Pxe,
    /// None.
    Disabled,
}

impl AddPorts {
    fn as_str(self) -> &'static str {
        match self {
            AddPorts::All => "all",
            AddPorts::Active => "active",
            AddPorts::Pxe => "pxe",
            AddPorts::Disabled => "disabled",
        }
    }
}

/// Which of the node's existing ports stay (Ironic's `keep_ports`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeepPorts {
    /// Every port, even those the inventory does not show.
    #[default]
    All,
    /// Ports whose MAC is in the inventory.
    Present,
    /// Ports whose MAC add_ports chose.
    Added,
}

/// `[agent]`: the built-in interface's options, with Ironic's
/// `[inspector]` names where it has one.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub add_ports: AddPorts,
    pub keep_ports: KeepPorts,
    /// Set each port's pxe_enabled from the inventory.
    pub update_pxe_enabled: bool,
    /// Leave 1 GiB of the root disk for partitioning (local_gb − 1).
    pub disk_partitioning_spacing: bool,
    /// Replace properties that are already set (default: never, as the
    /// in-band inspection design's policy).
    pub overwrite_existing: bool,
    /// CPU flag → capability set to `true` (Ironic's `cpu_capabilities`).
    pub cpu_capabilities: BTreeMap<String, String>,
    /// A waiting inspection with no data after this long fails.
    #[serde(with = "humantime_serde")]
    pub inspect_wait_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        let caps = [
            ("vmx", "cpu_vt"),
            ("svm", "cpu_vt"),
            ("aes", "cpu_aes"),
            ("pse", "cpu_hugepages"),
            ("pdpe1gb", "cpu_hugepages_1g"),
            ("smx", "cpu_txt"),
        ];
        Self {
            add_ports: AddPorts::Pxe,
            keep_ports: KeepPorts::All,
            update_pxe_enabled: true,
            disk_partitioning_spacing: true,
            overwrite_existing: false,
            cpu_capabilities: caps
                .iter()
                .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
                .collect(),
            inspect_wait_timeout: Duration::from_secs(1800),
        }
    }
}

/// A port as the node has it, or as it should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    pub address: String,
    pub pxe_enabled: bool,
    pub client_id: Option<String>,
}

/// What the node has now.
#[derive(Clone, Debug, Default)]
pub struct NodeNow {
    pub uuid: String,
    pub properties: Dict,
    pub ports: Vec<Port>,
}

/// What the node's properties and ports become.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Only the properties that change.
    pub properties: Dict,
    pub add_ports: Vec<Port>,
    pub delete_ports: Vec<String>,
    pub update_ports: Vec<Port>,
    /// To store beside the inventory.
    pub plugin_data: Dict,
}

/// Is `key` set on the node already (not absent, null or empty)?
fn is_set(props: &Dict, key: &str) -> bool {
    match props.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// `capabilities` (`k:v,k:v`) as pairs; malformed ones are an error, as
/// Ironic's `get_updated_capabilities`.
fn parse_capabilities(raw: &str) -> Result<Vec<(String, String)>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|p| {
            p.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("Invalid capabilities string '{raw}'."))
        })
        .collect()
}

/// The capabilities the inventory shows: CPU flags and the boot mode.
fn found_capabilities(inventory: &Dict, cfg: &AgentConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let flags: Vec<&str> = inventory
        .get("cpu")
        .and_then(|c| c.get("flags"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (flag, cap) in &cfg.cpu_capabilities {
        if flags.contains(&flag.as_str()) && !found.iter().any(|(k, _)| k == cap) {
            found.push((cap.clone(), "true".to_owned()));
        }
    }
    let mode = inventory
        .get("boot")
        .and_then(|b| b.get("current_boot_mode"))
        .and_then(Value::as_str);
    if let Some(mode) = mode {
        found.push(("boot_mode".to_owned(), mode.to_owned()));
    }
    found
}

/// The merged capabilities string, or `None` when nothing changes. A key
/// already there keeps its value unless `overwrite`.
fn merged_capabilities(
    props: &Dict,
    found: Vec<(String, String)>,
    overwrite: bool,
) -> Result<Option<String>, String> {
    let current = props
        .get("capabilities")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut caps = parse_capabilities(current)?;
    let before = caps.clone();
    for (k, v) in found {
        match caps.iter_mut().find(|(ck, _)| *ck == k) {
            Some(existing) if overwrite => existing.1 = v,
            Some(_) => {}
            None => caps.push((k, v)),
        }
    }
    if caps == before {
        return Ok(None);
    }
    let joined: Vec<String> = caps.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    Ok(Some(joined.join(",")))
}

/// The root disk: by the node's `root_device` hints, else the smallest
/// disk of at least [`MIN_ROOT_DISK`]; `None`: diskless.
pub fn root_disk(uuid: &str, inventory: &Dict, props: &Dict) -> Result<Option<Dict>, String> {
    let disks: Vec<Dict> = inventory
        .get("disks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|d| d.as_object().cloned()).collect())
        .unwrap_or_default();
    let size = |d: &Dict| d.get("size").and_then(Value::as_u64).unwrap_or(0);
    match props.get("root_device").filter(|h| !h.is_null()) {
        Some(raw) => {
            let hints = hints::parse(raw).map_err(|e| {
                format!("No disks could be found using root device hints {raw} for node {uuid} because they failed to validate. Error: {e}")
            })?;
            match disks.iter().find(|d| hints.matches(d)) {
                Some(d) => Ok(Some(d.clone())),
                None => Err(format!(
                    "No disks satisfied root device hints for node {uuid}"
                )),
            }
        }
        None => Ok(disks
            .iter()
            .filter(|d| size(d) >= MIN_ROOT_DISK)
            .min_by_key(|d| size(d))
            .cloned()),
    }
}

/// local_gb of `disk`: whole GiB, less 1 with `spacing`; 0 without a disk
/// or for one under 1 GiB.
pub fn local_gb(disk: Option<&Dict>, spacing: bool) -> u64 {
    let gib = disk
        .and_then(|d| d.get("size"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        / GIB;
    match gib {
        0 => 0,
        n if spacing => n - 1,
        n => n,
    }
}

/// The properties the inventory gives: cpus, memory_mb, cpu_arch,
/// local_gb, capabilities (merged with the node's).
fn discovered(
    node: &NodeNow,
    inventory: &Dict,
    cfg: &AgentConfig,
    plugin_data: &mut Dict,
) -> Result<Dict, String> {
    let uuid = &node.uuid;
    let cpu = inventory.get("cpu").and_then(Value::as_object);
    let mut found = Dict::new();
    let Some(arch) = cpu.and_then(|c| str_field(c, "architecture")) else {
        return Err(format!(
            "Inventory for node {uuid} is invalid: Inventory has malformed or missing CPU architecture information: {} for node {uuid}.",
            inventory.get("cpu").unwrap_or(&Value::Null)
        ));
    };
    found.insert("cpu_arch".into(), arch.into());
    match cpu.and_then(|c| c.get("count")).and_then(Value::as_u64) {
        Some(n) if n > 0 => {
            found.insert("cpus".into(), n.into());
        }
        _ => warn!(node = %uuid, "no CPU count in the inventory"),
    }
    let memory = inventory
        .get("memory")
        .and_then(|m| m.get("physical_mb"))
        .and_then(Value::as_u64);
    let Some(memory) = memory else {
        return Err(format!(
            "Inventory for node {uuid} is invalid: Inventory has missing memory information: {} for node {uuid}.",
            inventory.get("memory").unwrap_or(&Value::Null)
        ));
    };
    found.insert("memory_mb".into(), memory.into());
    let disk = root_disk(uuid, inventory, &node.properties)?;
    let gb = local_gb(disk.as_ref(), cfg.disk_partitioning_spacing);
    if disk.is_none() {
        info!(node = %uuid, "no root disk found; the node is taken as diskless");
    }
    if let Some(d) = &disk {
        plugin_data.insert("root_disk".into(), Value::Object(d.clone()));
    }
    plugin_data.insert("local_gb".into(), gb.into());
    found.insert("local_gb".into(), gb.into());

    let mut set = Dict::new();
    for (k, v) in found {
        if !cfg.overwrite_existing && is_set(&node.properties, &k) {
            continue;
        }
        if node.properties.get(&k) != Some(&v) {
            set.insert(k, v);
        }
    }
    let caps = found_capabilities(inventory, cfg);
    if let Some(c) = merged_capabilities(&node.properties, caps, cfg.overwrite_existing)? {
        set.insert("capabilities".into(), c.into());
    }
    Ok(set)
}

/// Process one ramdisk post for `node`: the [`Outcome`], or why the
/// inspection fails (the text goes to the node's last_error).
pub fn process(
    node: &NodeNow,
    inventory: &Dict,
    mut plugin_data: Dict,
    cfg: &AgentConfig,
) -> Result<Outcome, String> {
    if let Some(e) = plugin_data.get("error").filter(|e| match e {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    }) {
        let shown = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
        return Err(format!("Ramdisk reported error: {shown}"));
    }
    let all = all_interfaces(&node.uuid, inventory)?;
    let valid = valid_interfaces(&node.uuid, inventory, &all, cfg.add_ports)?;
    let properties = discovered(node, inventory, cfg, &mut plugin_data)?;
    let mut out = ports(node, &all, &valid, cfg);
    out.properties = properties;
    plugin_data.insert("all_interfaces".into(), iface_map(&all));
    plugin_data.insert("valid_interfaces".into(), iface_map(&valid));
    plugin_data.insert(
        "macs".into(),
        Value::Array(valid.iter().map(|i| i.mac.clone().into()).collect()),
    );
    // As Ironic: logs can be huge and are not kept with the data.
    plugin_data.remove("logs");
    out.plugin_data = plugin_data;
    Ok(out)
}
