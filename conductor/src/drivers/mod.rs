//! Hardware types and interfaces as Ironic's driver factory has them: the
//! [`Registry`] of what the `[drivers]` config enables (checked at start),
//! the choice and check of a node's interfaces on create and PATCH (a
//! value must be enabled and supported by the node's hardware type; unset
//! ones take the default), with Ironic's 400 wording, and the classic
//! driver aliases expanded into a hardware type and interfaces.
//!
//! Callers: `config` (check at load), `service::nodes` (create, PATCH),
//! `service` validate, `api::drivers` (`GET /v1/drivers`), `db` (a stored
//! node's interfaces).

pub mod catalog;
mod config;

use std::collections::BTreeMap;

use serde_json::Value;

pub use catalog::{Alias, HardwareType, Kind, FAKE_HARDWARE};
pub use config::DriversConfig;

use crate::model::{Dict, Node};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DriverError {
    /// Ironic's answer to a node create or PATCH naming a driver no
    /// conductor has (NoValidHost, 400).
    #[error("No valid host was found. Reason: No conductor service registered which supports driver {0} for conductor group \"\".")]
    NoValidHost(String),
    /// `GET /v1/drivers/{name}` of an unknown driver (404).
    #[error("Could not find the following driver(s) or hardware type(s): {0}.")]
    DriverNotFound(String),
    #[error("Could not find the following interface in the '{entrypoint}' entrypoint: {iface}. Valid interfaces are {valid}.")]
    InterfaceNotFound {
        entrypoint: String,
        iface: String,
        valid: String,
    },
    #[error(
        "{kind} interface implementation '{iface}' is not supported by hardware type {class}."
    )]
    Incompatible {
        kind: &'static str,
        iface: String,
        class: &'static str,
    },
    #[error("For{node_info} hardware type '{driver}', no default value found for {kind} interface could be determined. Please ensure the interfaces are enabled.")]
    NoValidDefault {
        node_info: String,
        driver: String,
        kind: &'static str,
    },
    /// A config name this conductor does not know.
    #[error("Could not find the following items in the '{entrypoint}' entrypoint: {names}.")]
    NotInEntrypoint { entrypoint: String, names: String },
    #[error("{0}")]
    Config(String),
    /// A field of the wrong JSON type.
    #[error("{0}")]
    Invalid(String),
}

/// A node's interfaces other than console (which `Node` keeps as
/// `console_interface`), stored as one JSON object `{kind: name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSet(BTreeMap<Kind, String>);

impl InterfaceSet {
    /// From the stored JSON; kinds missing there (a node stored by an
    /// older conductor) take the hardware type's first supported name.
    pub fn from_stored(driver: &str, stored: &Dict) -> Self {
        let ht = catalog::hardware_type(driver);
        let mut set = BTreeMap::new();
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Console) {
            let name = match stored.get(kind.name()).and_then(Value::as_str) {
                Some(s) => s.to_owned(),
                // Not `agent`/`inspector` for inspect: an older
                // conductor's node had no inspect service behind it.
                None => ht
                    .and_then(|h| {
                        h.supported(kind).iter().find(|n| {
                            kind != Kind::Inspect
                                || !crate::provision::interfaces::INSPECT_SERVICE_INTERFACES
                                    .contains(n)
                        })
                    })
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
            };
            set.insert(kind, name);
        }
        Self(set)
    }

    pub fn to_stored(&self) -> Dict {
        self.0
            .iter()
            .map(|(k, v)| (k.name().to_owned(), Value::String(v.clone())))
            .collect()
    }
}

impl Node {
    /// The node's implementation of `kind` (`""` before it is chosen).
    pub fn interface(&self, kind: Kind) -> &str {
        if kind == Kind::Console {
            return &self.console_interface;
        }
        self.interfaces.0.get(&kind).map_or("", String::as_str)
    }

    pub fn set_interface(&mut self, kind: Kind, name: String) {
        if kind == Kind::Console {
            self.console_interface = name;
        } else {
            self.interfaces.0.insert(kind, name);
        }
    }
}

/// The interfaces an alias sets.
pub type Preset = &'static [(Kind, &'static str)];

/// What this conductor has enabled: hardware types, and per kind the
/// implementations (config order) and the configured default.
#[derive(Clone, Debug)]
pub struct Registry {
    hardware_types: Vec<&'static HardwareType>,
    enabled: BTreeMap<Kind, Vec<String>>,
    defaults: BTreeMap<Kind, String>,
    /// The inspect service is configured (`[inspect] endpoint`): only then
    /// may `agent` / `inspector` be a default inspect interface (Ironic
    /// prefers `agent` where it is enabled; here it can only work with
    /// the service).
    inspect_service: bool,
}

impl Default for Registry {
    /// Everything enabled, no configured defaults.
    fn default() -> Self {
        Self::from_config(&DriversConfig::default()).expect("the built-in catalog is consistent")
    }
}

/// A list as Python prints one (Ironic's messages interpolate lists).
fn py_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Registry {
    /// The registry `cfg` describes, or why the conductor cannot start
    /// with it (unknown names, an empty list, a default that is not
    /// enabled, an enabled hardware type left without a default).
    pub fn from_config(cfg: &DriversConfig) -> Result<Self, DriverError> {
        let hardware_types = match &cfg.enabled_hardware_types {
            None => catalog::HARDWARE_TYPES.iter().collect(),
            Some(names) => {
                let unknown: Vec<&str> = names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| catalog::hardware_type(n).is_none())
                    .collect();
                if !unknown.is_empty() {
                    return Err(DriverError::NotInEntrypoint {
                        entrypoint: "ironic.hardware.types".into(),
                        names: unknown.join(", "),
                    });
                }
                let mut v: Vec<&'static HardwareType> = Vec::new();
                for n in names {
                    let ht = catalog::hardware_type(n).expect("checked above");
                    if !v.iter().any(|h| h.name == ht.name) {
                        v.push(ht);
                    }
                }
                v
            }
        };
        if hardware_types.is_empty() {
            return Err(DriverError::Config(
                "drivers.enabled_hardware_types is empty: the conductor cannot be started because no hardware types were loaded.".into(),
            ));
        }
        let mut enabled = BTreeMap::new();
        let mut defaults = BTreeMap::new();
        for kind in Kind::ALL {
            let names: Vec<String> = match cfg.enabled(kind) {
                None => kind.known().iter().map(|s| (*s).to_owned()).collect(),
                Some(list) => {
                    let unknown: Vec<&str> = list
                        .iter()
                        .map(String::as_str)
                        .filter(|n| !kind.known().contains(n))
                        .collect();
                    if !unknown.is_empty() {
                        return Err(DriverError::NotInEntrypoint {
                            entrypoint: kind.entrypoint(),
                            names: unknown.join(", "),
                        });
                    }
                    let mut v: Vec<String> = Vec::new();
                    for n in list {
                        if !v.contains(n) {
                            v.push(n.clone());
                        }
                    }
                    v
                }
            };
            if names.is_empty() {
                return Err(DriverError::Config(format!(
                    "drivers.enabled_{}_interfaces cannot be empty.",
                    kind.name()
                )));
            }
            if let Some(d) = cfg.default_for(kind) {
                if !names.contains(d) {
                    return Err(DriverError::Config(format!(
                        "drivers.default_{k}_interface \"{d}\" is not in drivers.enabled_{k}_interfaces {}.",
                        py_list(&names),
                        k = kind.name()
                    )));
                }
                defaults.insert(kind, d.clone());
            }
            enabled.insert(kind, names);
        }
        let reg = Self {
            hardware_types,
            enabled,
            defaults,
            inspect_service: false,
        };
        for ht in &reg.hardware_types {
            for kind in Kind::ALL {
                reg.default_for(ht, kind, None)?;
            }
        }
        Ok(reg)
    }

    /// Say whether the inspect service is configured: with it, `agent`
    /// becomes the default inspect interface of the hardware types that
    /// prefer it (ipmi, redfish, ilo), when enabled and no
    /// `default_inspect_interface` is set.
    pub fn set_inspect_service(&mut self, configured: bool) {
        self.inspect_service = configured;
    }

    pub fn hardware_types(&self) -> &[&'static HardwareType] {
        &self.hardware_types
    }

    /// An enabled hardware type by name.
    pub fn hardware_type(&self, name: &str) -> Option<&'static HardwareType> {
        self.hardware_types.iter().copied().find(|h| h.name == name)
    }

    pub fn enabled(&self, kind: Kind) -> &[String] {
        self.enabled.get(&kind).map_or(&[], Vec::as_slice)
    }

    pub fn is_enabled(&self, kind: Kind, name: &str) -> bool {
        self.enabled(kind).iter().any(|n| n == name)
    }

    /// The aliases usable here: their hardware type and interfaces enabled.
    pub fn aliases(&self) -> Vec<&'static Alias> {
        catalog::ALIASES
            .iter()
            .filter(|a| {
                self.hardware_type(a.hardware_type).is_some()
                    && a.interfaces.iter().all(|(k, n)| self.is_enabled(*k, n))
            })
            .collect()
    }

    /// The hardware type `driver` names (itself or through an alias) and
    /// the interfaces the alias sets; NoValidHost when it is neither.
    pub fn resolve(&self, driver: &str) -> Result<(&'static HardwareType, Preset), DriverError> {
        if let Some(a) = catalog::alias(driver) {
            if let Some(ht) = self.hardware_type(a.hardware_type) {
                return Ok((ht, a.interfaces));
            }
        }
        self.hardware_type(driver)
            .map(|ht| (ht, &[][..]))
            .ok_or_else(|| DriverError::NoValidHost(driver.to_owned()))
    }

    /// Is `name` usable as `ht`'s `kind` interface here?
    pub fn check(&self, ht: &HardwareType, kind: Kind, name: &str) -> Result<(), DriverError> {
        if !self.is_enabled(kind, name) {
            return Err(DriverError::InterfaceNotFound {
                entrypoint: kind.entrypoint(),
                iface: name.to_owned(),
                valid: py_list(self.enabled(kind)),
            });
        }
        if !ht.supports(kind, name) {
            return Err(DriverError::Incompatible {
                kind: kind.name(),
                iface: name.to_owned(),
                class: ht.class,
            });
        }
        Ok(())
    }

    /// The default `kind` interface for `ht`: the configured
    /// `default_<kind>_interface`, else the first the hardware type
    /// supports that is enabled (Ironic's `default_interface`).
    pub fn default_for(
        &self,
        ht: &HardwareType,
        kind: Kind,
        node: Option<&str>,
    ) -> Result<String, DriverError> {
        let found = match self.defaults.get(&kind) {
            Some(d) => ht.supports(kind, d).then(|| d.clone()),
            None => ht
                .supported(kind)
                .iter()
                .filter(|n| {
                    kind != Kind::Inspect
                        || self.inspect_service
                        || !crate::provision::interfaces::INSPECT_SERVICE_INTERFACES.contains(n)
                })
                .find(|n| self.is_enabled(kind, n))
                .map(|n| (*n).to_owned()),
        };
        found.ok_or_else(|| DriverError::NoValidDefault {
            node_info: node.map(|u| format!(" node {u} with")).unwrap_or_default(),
            driver: ht.name.to_owned(),
            kind: kind.name(),
        })
    }

    /// Settle `node`'s driver and interfaces after a create (`before`
    /// `None`) or a PATCH (`before` the stored node) wrote the request into
    /// `doc` (the `<kind>_interface` members, null when unset or removed):
    /// an alias becomes its hardware type and interfaces; a value the
    /// request sets is checked; an unset or removed one takes the alias's
    /// or the default; a kept one stays, unless the driver changed and the
    /// new hardware type cannot use it (then the default).
    pub fn apply(
        &self,
        node: &mut Node,
        doc: &Dict,
        before: Option<&Node>,
    ) -> Result<(), DriverError> {
        self.apply_with(node, doc, before, false)
    }

    /// [`Registry::apply`] with `reset` (Ironic's `reset_interfaces`): on
    /// a driver change, every interface the request does not set takes the
    /// new hardware type's default; without a driver change it is refused.
    pub fn apply_with(
        &self,
        node: &mut Node,
        doc: &Dict,
        before: Option<&Node>,
        reset: bool,
    ) -> Result<(), DriverError> {
        let (ht, preset) = self.resolve(&node.driver)?;
        node.driver = ht.name.to_owned();
        let driver_changed = before.is_some_and(|b| b.driver != node.driver);
        if reset && !driver_changed {
            return Err(DriverError::Invalid(
                "The reset_interfaces parameter can be provided only when changing the node's driver.".into(),
            ));
        }
        let uuid = node.uuid.clone();
        let preset_or_default = |kind: Kind| -> Result<String, DriverError> {
            match preset.iter().find(|(k, _)| *k == kind) {
                Some((_, p)) => self.check(ht, kind, p).map(|()| (*p).to_owned()),
                None => self.default_for(ht, kind, Some(&uuid)),
            }
        };
        for kind in Kind::ALL {
            let field = kind.field();
            let req = match doc.get(&field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(DriverError::Invalid(format!(
                        "{field} must be a string, not {other}."
                    )))
                }
            };
            let explicit = match before {
                None => req.is_some(),
                Some(b) => req.as_deref() != Some(b.interface(kind)),
            };
            let value = match req {
                Some(v) if explicit => {
                    self.check(ht, kind, &v)?;
                    v
                }
                None => preset_or_default(kind)?,
                Some(v) => {
                    if preset.iter().any(|(k, _)| *k == kind) {
                        preset_or_default(kind)?
                    } else if driver_changed && (reset || self.check(ht, kind, &v).is_err()) {
                        self.default_for(ht, kind, Some(&uuid))?
                    } else {
                        v
                    }
                }
            };
            node.set_interface(kind, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
